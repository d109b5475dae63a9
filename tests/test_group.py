"""Many seeds in one process (issue 29): each seed is the run it would be alone, a group resumes,
the replay mirrors are checked against the device's memory, and the seed axis shards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

from dodgerl.checkpoint import CheckpointError, complete_checkpoints
from dodgerl.cli import main as cli_main
from dodgerl.config import ConfigError, config_from_dict
from dodgerl.train import parse_seeds
from tests.test_train import read_csv, tiny_raw, write_config

COUNTERS = ("step", "episodes", "updates", "train_return", "train_length")
LOSSES = ("critic_loss", "actor_loss", "temperature", "entropy", "q_mean")
RTOL = 1e-4
"""Seed i of a group against seed i alone: vmapped and single programs may order a reduction
differently, so losses agree to float tolerance, not bit for bit."""


def group_dir_of(results: Path) -> Path:
    groups = [p for p in results.glob("*/*") if (p / "group.json").is_file()]
    assert len(groups) == 1, groups
    return groups[0]


def train_group(tmp_path, raw, seeds, name="g", *extra):
    kind = "vector" if raw["env"]["obs_mode"] == "vector" else "topdown"
    results = tmp_path / name
    assert cli_main(kind, ["--config", str(write_config(tmp_path, raw)), "--results-dir",
                           str(results), "--seeds", seeds, *extra]) == 0
    return group_dir_of(results)


def train_alone(tmp_path, raw, seed):
    kind = "vector" if raw["env"]["obs_mode"] == "vector" else "topdown"
    results = tmp_path / f"alone{seed}"
    assert cli_main(kind, ["--config", str(write_config(tmp_path, raw)), "--results-dir",
                           str(results), "--seed", str(seed)]) == 0
    return next(p for p in results.glob("*/*") if p.is_dir())


def assert_same_run(a: Path, b: Path, rows: int | None = None) -> None:
    """progress.csv counters equal and losses within RTOL; eval.csv returns equal (first
    ``rows`` progress rows only, when given)."""
    pa, pb = read_csv(a / "progress.csv")[:rows], read_csv(b / "progress.csv")[:rows]
    assert len(pa) == len(pb) > 0
    for ra, rb in zip(pa, pb):
        assert [ra[k] for k in COUNTERS] == [rb[k] for k in COUNTERS], (ra["step"], a)
        for k in LOSSES:
            assert (ra[k] == "") == (rb[k] == ""), (k, ra["step"])
            if ra[k]:
                assert float(ra[k]) == pytest.approx(float(rb[k]), rel=RTOL, abs=1e-6), (k, ra["step"])
    if rows is None:
        ea, eb = read_csv(a / "eval.csv"), read_csv(b / "eval.csv")
        assert [(r["step"], r["mean_return"]) for r in ea] == [(r["step"], r["mean_return"]) for r in eb]


def test_seeds_parse_as_ranges_and_lists():
    assert parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert parse_seeds("0,3,7") == [0, 3, 7]
    assert parse_seeds("0-1,9") == [0, 1, 9]
    for bad in ("a", "3-1", "1,1", "-2", ""):
        with pytest.raises(ConfigError, match="--seeds"):
            parse_seeds(bad)


@pytest.mark.parametrize("mirror", [False, True])
def test_each_seed_of_a_vector_group_is_the_run_it_would_be_alone(tmp_path, mirror):
    """Two seeds in one process (host replay, or the stacked device mirror) against the same
    seeds run alone: same counters and evaluations, losses within RTOL."""
    raw = tiny_raw("vector", total=200, device_mirror=mirror)
    raw["env"]["level"] = 2  # episodes end within the run
    group = train_group(tmp_path, raw, "3,4")
    listed = json.loads((group / "group.json").read_text())
    assert listed["seeds"] == [3, 4] and listed["runs"] == ["seed3", "seed4"]
    for seed in (3, 4):
        run_dir = group / f"seed{seed}"
        assert yaml.safe_load((run_dir / "config.yaml").read_text())["seed"] == seed
        assert (run_dir / "plan.json").is_file() and complete_checkpoints(run_dir / "checkpoints")
        assert_same_run(run_dir, train_alone(tmp_path, raw, seed))
    # A seed's directory is a run directory to dodgerl.evaluate: its best policy scores, on the
    # evaluation's own seeds, what its eval.csv logged as the best.
    from dodgerl.evaluate import evaluate, load_agent

    loaded = load_agent(group / "seed4")
    best = max(float(r["mean_return"]) for r in read_csv(group / "seed4" / "eval.csv"))
    result = evaluate(loaded.agent, loaded.config.env, episodes=raw["train"]["eval_episodes"])
    assert float(np.mean(result.returns)) == pytest.approx(best, abs=1e-6)
    # The seeds learned apart: their losses differ.
    a, b = (read_csv(group / f"seed{s}" / "progress.csv")[-1]["critic_loss"] for s in (3, 4))
    assert a != b


def test_a_pixel_group_agrees_with_the_seeds_alone_up_to_float_drift(tmp_path):
    """From pixels the first update call's losses agree within RTOL. After it, a vmapped conv's
    float differences (~1e-7) grow: Adam scales near-zero gradient components to full steps of
    the learning rate, so by the second call (step 100) the losses differ by ~3e-4. Compared:
    the rows up to the first update call (step 80), and the counters and returns to step 100."""
    raw = tiny_raw("topdown", total=100)
    raw["env"]["level"] = 2
    group = train_group(tmp_path, raw, "3,4")
    for seed in (3, 4):
        alone = train_alone(tmp_path, raw, seed)
        assert_same_run(group / f"seed{seed}", alone, rows=4)
        assert [[r[k] for k in COUNTERS] for r in read_csv(group / f"seed{seed}" / "progress.csv")] == \
            [[r[k] for k in COUNTERS] for r in read_csv(alone / "progress.csv")]


def test_a_group_resumes_every_seed_from_the_step_they_all_saved(tmp_path, capsys):
    raw = tiny_raw("vector", total=100_000, checkpoint_freq=50)
    results = tmp_path / "g"
    config = write_config(tmp_path, raw)
    assert cli_main("vector", ["--config", str(config), "--results-dir", str(results),
                               "--seeds", "0-2", "--total-timesteps", "150"]) == 0
    group = group_dir_of(results)
    # A kill -9 in the middle of the seeds' saves: seed 1's newest checkpoint is missing.
    import shutil

    newest = complete_checkpoints(group / "seed1" / "checkpoints")[-1]
    assert newest.name == "150"
    shutil.rmtree(newest)
    capsys.readouterr()
    assert cli_main("vector", ["--resume", str(group), "--total-timesteps", "260"]) == 0
    out = capsys.readouterr().out
    for seed in range(3):
        run_dir = group / f"seed{seed}"
        assert f"resumed from {run_dir / 'checkpoints' / '100'}" in out
        steps = [int(r["step"]) for r in read_csv(run_dir / "progress.csv")]
        assert steps == sorted(set(steps)) and steps[-1] == 260
        assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["total_timesteps"] == 260


def test_resuming_a_group_needs_its_group_directory(tmp_path, capsys):
    raw = tiny_raw("vector", total=60)
    group = train_group(tmp_path, raw, "0-1")
    with pytest.raises(SystemExit):  # the group's seeds are in its group.json
        cli_main("vector", ["--resume", str(group), "--seeds", "0-1"])
    capsys.readouterr()
    from dodgerl.train import train_seeds

    with pytest.raises(CheckpointError, match="not a group directory"):
        train_seeds(None, resume=group / "seed0")
    # A seed's own directory resumes as a single run.
    assert cli_main("vector", ["--resume", str(group / "seed0"), "--total-timesteps", "80"]) == 0
    assert read_csv(group / "seed0" / "progress.csv")[-1]["step"] == "80"


def test_mirrors_that_do_not_fit_fall_back_to_host_replay_or_say_how_many_fit(monkeypatch):
    from dodgerl.train import group as group_mod
    from dodgerl.train.plan import Machine, choose_plan

    class Replay:
        n_envs, slots_per_env, observation_shape = 1, 1000, (100, 100, 10)
        observation_dtype = np.dtype(np.uint8)

    # 100 MB per mirror on a device of 1 GB: 8 fit at 85%.
    monkeypatch.setattr("dodgerl.replay.mirror.device_memory_bytes", lambda device: 10**9)
    config = config_from_dict({"env": {"obs_mode": "vector"}})
    plan = choose_plan(config, Machine("gpu", 16), n_seeds=10)
    assert plan.device_mirror
    assert not group_mod.plan_for_memory(plan, [Replay()] * 10).device_mirror
    assert group_mod.plan_for_memory(plan, [Replay()] * 8).device_mirror
    forced = choose_plan(config_from_dict({"env": {"obs_mode": "vector"},
                                           "perf": {"device_mirror": True}}),
                         Machine("gpu", 16), n_seeds=10)
    with pytest.raises(ConfigError, match=r"perf.device_mirror: 10 device mirrors .* hold 8 .*at most 8 seeds"):
        group_mod.plan_for_memory(forced, [Replay()] * 10)


def test_the_pool_of_a_group_is_planned_for_every_seeds_envs():
    from dodgerl.train.plan import Machine, choose_plan

    config = config_from_dict({"env": {"obs_mode": "topdown", "image_size": 84},
                               "train": {"n_envs": 16}})
    alone, five = (choose_plan(config, Machine("gpu", 16), n_seeds=n) for n in (1, 5))
    assert alone.envs_per_worker == 1 and five.envs_per_worker == 5  # 80 envs on 16 cores
    assert alone.eval_workers == 5 and five.eval_workers == 1


SHARDED = textwrap.dedent("""
    import sys
    import jax
    sys.path.insert(0, {root!r})
    from dodgerl.config import config_from_dict
    from dodgerl.train import train, train_seeds
    from tests.test_group import assert_same_run
    from tests.test_train import tiny_raw

    assert len(jax.devices()) == 4
    raw = tiny_raw("vector", total=120, device_mirror={mirror})
    raw["env"]["level"] = 2
    group = train_seeds(config_from_dict(raw), [0, 1, 2, 3], results_dir={results!r} + "/g")
    alone = train(config_from_dict({{**raw, "seed": 2}}), results_dir={results!r} + "/a")
    assert_same_run(group.runs[2].run_dir, alone.run_dir)
    print("SHARDED-OK")
""")


@pytest.mark.parametrize("mirror", [False, True])
def test_the_seed_axis_shards_over_four_devices(tmp_path, mirror):
    """Four fake CPU devices: the stacked agent (and the mirror) split one seed per device, and
    seed 2 is still the run it is alone."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "JAX_PLATFORMS": "cpu"}
    root = str(Path(__file__).resolve().parent.parent)
    code = SHARDED.format(root=root, results=str(tmp_path), mirror=mirror)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=600, cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "seeds sharded over 4 devices" in done.stdout and "SHARDED-OK" in done.stdout


def test_kill_9_of_a_group_then_resume_loses_no_more_than_one_run_does(tmp_path):
    """A 3-seed group killed at random moments after its first checkpoints: each resume starts
    every seed at the newest checkpoint all of them completed, and every seed's progress.csv
    ends without a gap or a repeat."""
    import random
    import signal
    import time

    rng = random.Random(1)
    raw = tiny_raw("vector", total=100_000, checkpoint_freq=40, eval_freq=0, log_freq=20)
    config = write_config(tmp_path, raw)
    results = tmp_path / "r"
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, SDL_VIDEODRIVER="dummy", PYTHONUNBUFFERED="1")
    script = str(root / "experiments" / "vector_sac.py")
    proc = subprocess.Popen([sys.executable, script, "--config", str(config), "--results-dir",
                             str(results), "--seeds", "0-2"], env=env, cwd=root,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    group = None
    for _ in range(2):
        deadline = time.time() + 180
        while time.time() < deadline:
            groups = [p for p in results.glob("*/*") if (p / "group.json").is_file()]
            if groups and all(complete_checkpoints(groups[0] / f"seed{s}" / "checkpoints") for s in range(3)):
                group = groups[0]
                break
            time.sleep(0.2)
        assert group is not None, "no checkpoint appeared"
        time.sleep(rng.uniform(0.0, 2.0))
        proc.kill()
        proc.wait()
        common = min(int(complete_checkpoints(group / f"seed{s}" / "checkpoints")[-1].name) for s in range(3))
        proc = subprocess.Popen([sys.executable, script, "--resume", str(group)], env=env, cwd=root,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        seen = []
        for line in proc.stdout:
            if "resumed from" in line:
                seen.append(line)
                if len(seen) == 3:
                    break
        assert all(f"at step {common}" in line for line in seen), (seen, common)
        time.sleep(rng.uniform(1.0, 3.0))
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=180) == 0
    for s in range(3):
        steps = [int(r["step"]) for r in read_csv(group / f"seed{s}" / "progress.csv")]
        assert steps == list(range(20, steps[-1] + 1, 20)), f"seed {s}: a gap or repeat after resume"


def test_a_seed_whose_newest_checkpoint_is_damaged_takes_the_group_back_with_it(tmp_path, capsys):
    raw = tiny_raw("vector", total=100_000, checkpoint_freq=50)
    results = tmp_path / "g"
    assert cli_main("vector", ["--config", str(write_config(tmp_path, raw)), "--results-dir",
                               str(results), "--seeds", "0-1", "--total-timesteps", "150"]) == 0
    group = group_dir_of(results)
    damaged = next(p for p in sorted((group / "seed1" / "checkpoints" / "150").rglob("*"))
                   if p.is_file() and p.stat().st_size > 100 and "manifest" not in p.name)
    damaged.write_bytes(b"\0" * damaged.stat().st_size)  # complete on disk, fails its manifest
    capsys.readouterr()
    assert cli_main("vector", ["--resume", str(group), "--total-timesteps", "200"]) == 0
    out = capsys.readouterr().out
    assert "the seeds restored different steps ([100, 150]): all resume from 100" in out
    for seed in range(2):
        assert f"resumed from {group / f'seed{seed}' / 'checkpoints' / '100'} at step 100" in out
        steps = [int(r["step"]) for r in read_csv(group / f"seed{seed}" / "progress.csv")]
        assert steps == list(range(20, 201, 20))


def test_stacked_seeds_of_large_images_compute_their_convs_as_gemms_on_an_accelerator(monkeypatch, capsys):
    """Above CONV_GEMM_MAX_SIDE, on an accelerator, a group whose config leaves conv_gemm open
    gets GEMMs (vmapped cuDNN convolutions become slow grouped convolutions); a choice the config
    makes, a single seed, small images, vectors and the CPU keep the config as it is."""
    import jax

    from dodgerl.train.group import with_stackable_convs

    def config(side=256, **agent_impl):
        raw = tiny_raw("topdown")
        raw["env"]["image_size"] = side
        raw["agent"]["impl"] = agent_impl
        return config_from_dict(raw)

    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert with_stackable_convs(config(), 3).agent.impl.conv_gemm is True
    assert "GEMMs" in capsys.readouterr().out
    assert with_stackable_convs(config(), 1).agent.impl.conv_gemm is None
    assert with_stackable_convs(config(conv_gemm=False), 3).agent.impl.conv_gemm is False
    assert with_stackable_convs(config(side=84), 3).agent.impl.conv_gemm is None
    assert with_stackable_convs(config_from_dict(tiny_raw("vector")), 3).agent.impl.conv_gemm is None
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    assert with_stackable_convs(config(), 3).agent.impl.conv_gemm is None
