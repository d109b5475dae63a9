"""The execution plan: speed settings chosen from the machine, overridden by perf:, validated."""

from __future__ import annotations

import json

import pytest

from dodgerl.config import ConfigError, config_from_dict
from dodgerl.train.plan import ExecutionPlan, Machine, choose_plan, envs_per_worker

GPU16 = Machine("gpu", 16)
CPU2 = Machine("cpu", 2)


def config(obs_mode="topdown", image_size=256, n_envs=16, **perf):
    return config_from_dict({"env": {"obs_mode": obs_mode, "image_size": image_size},
                             "train": {"n_envs": n_envs}, "perf": perf})


def test_a_gpu_gets_the_fast_path_of_each_observation():
    big = choose_plan(config(image_size=256), GPU16)
    assert (big.async_envs, big.envs_per_worker, big.dispatch_thread, big.updates_in_flight,
            big.device_mirror) == (True, 1, True, 2, True)
    assert (big.eval_in_background, big.eval_on_device, big.eval_async_envs, big.eval_workers) == (
        True, True, True, 0)
    small = choose_plan(config(image_size=84, n_envs=32), GPU16)
    assert (small.envs_per_worker, small.eval_workers, small.eval_in_background,
            small.eval_on_device) == (2, 5, True, False)
    vector = choose_plan(config(obs_mode="vector", n_envs=256), GPU16)
    assert (vector.async_envs, vector.envs_per_worker, vector.dispatch_thread,
            vector.updates_in_flight, vector.eval_workers) == (True, 16, False, 1, 2)


def test_a_cpu_keeps_everything_in_process_and_in_the_loop():
    for obs_mode in ("topdown", "vector"):
        plan = choose_plan(config(obs_mode=obs_mode, n_envs=4), CPU2)
        assert (plan.async_envs, plan.dispatch_thread, plan.device_mirror, plan.updates_in_flight,
                plan.eval_in_background, plan.eval_workers, plan.eval_async_envs) == (
            False, False, False, 1, False, 0, False)
        assert plan.overlap and not plan.overridden


def test_one_env_never_goes_to_a_subprocess():
    assert not choose_plan(config(n_envs=1), GPU16).async_envs


def test_perf_overrides_win_and_the_settings_they_imply_follow():
    plan = choose_plan(config(image_size=256, overlap=False, eval_workers=2), GPU16)
    assert not plan.overlap and plan.eval_workers == 2
    # Processes exclude the plan's device copy and episode subprocesses: dropped, not an error.
    assert not plan.eval_on_device and not plan.eval_async_envs
    assert plan.overridden == ("eval_workers", "overlap")
    cpu = choose_plan(config(obs_mode="vector", n_envs=4, eval_on_device=True), CPU2)
    assert cpu.eval_on_device and cpu.eval_in_background


def test_grouping_keeps_the_subprocesses_within_the_cores():
    assert envs_per_worker(16, 16) == 1
    assert envs_per_worker(64, 16) == 4
    assert envs_per_worker(24, 16) == 2  # 12 processes: the fewest envs each that fit
    assert envs_per_worker(7, 4) == 7  # a prime: one process of all


def test_contradicting_overrides_fail_naming_the_key():
    with pytest.raises(ConfigError, match="perf.eval_workers: .*exclude each other"):
        config(eval_workers=2, eval_async_envs=True)
    with pytest.raises(ConfigError, match=r"perf.envs_per_worker: must divide train.n_envs \(16\)"):
        config(envs_per_worker=3)
    with pytest.raises(ConfigError, match="perf.updates_in_flight: must be 1 or 2"):
        config(updates_in_flight=3)


def test_the_plan_is_one_line_and_round_trips_to_json(tmp_path):
    plan = choose_plan(config(image_size=84, n_envs=32), GPU16)
    line = plan.summary()
    assert "\n" not in line and "gpu, 16 cores" in line and "5 processes" in line
    plan.write(tmp_path)
    saved = json.loads((tmp_path / "plan.json").read_text())
    assert saved["envs_per_worker"] == 2 and saved["machine"] == {"backend": "gpu", "cores": 16}
    assert set(saved) == {f for f in ExecutionPlan.__dataclass_fields__}
