"""Training runs: files of a run, resume, kill -9, interrupted checkpoints, signals, bad configs."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from dodgerl.checkpoint import complete_checkpoints, read_meta
from dodgerl.cli import main as cli_main
from dodgerl.config import ConfigError, PerfConfig, config_from_dict, load_config

REPO = Path(__file__).resolve().parent.parent
PERF_KEYS = {f.name for f in dataclasses.fields(PerfConfig)}


def tiny_raw(obs_mode: str = "topdown", total: int = 240, **train) -> dict:
    """A run small enough for CI: 64x64 images, 2 envs, a tiny network, a few hundred steps.
    Keyword arguments are train keys, or perf keys (execution plan overrides)."""
    perf = {k: train.pop(k) for k in list(train) if k in PERF_KEYS}
    return {
        "perf": perf,
        "experiment": f"test_{obs_mode}",
        "seed": 3,
        "env": {"level": 1, "obs_mode": obs_mode, "image_size": 64, "max_episode_steps": 60},
        "agent": {"batch_size": 16, "net_arch": [32, 32]},
        "replay": {"buffer_size": 2_000},
        "train": {
            "total_timesteps": total, "learning_starts": 60, "n_envs": 2, "eval_freq": 100,
            "eval_episodes": 2, "checkpoint_freq": 100, "keep_checkpoints": 2, "log_freq": 20,
            "progress_bar": False, **train,
        },
    }


def write_config(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def only_run_dir(results: Path) -> Path:
    runs = [p for p in results.glob("*/*") if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def run_cli(kind: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, SDL_VIDEODRIVER="dummy", PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, str(REPO / "experiments" / f"{kind}_sac.py"), *args],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO,
    )


def test_image_run_produces_every_file(tmp_path):
    config = write_config(tmp_path, tiny_raw("topdown"))
    assert cli_main("topdown", ["--config", str(config), "--results-dir", str(tmp_path / "r")]) == 0
    run_dir = only_run_dir(tmp_path / "r")
    assert run_dir.parent.name == "test_topdown"
    assert (run_dir / "config.yaml").is_file()
    saved = load_config(run_dir / "config.yaml")
    assert saved.env.image_size == 64 and saved.train.n_envs == 2
    progress = read_csv(run_dir / "progress.csv")
    assert [int(r["step"]) for r in progress] == list(range(20, 241, 20))
    assert float(progress[-1]["critic_loss"]) == float(progress[-1]["critic_loss"])  # not NaN
    assert int(progress[-1]["updates"]) == (240 - 60) * 1  # utd 1: one gradient step per env step
    evals = read_csv(run_dir / "eval.csv")
    assert [int(r["step"]) for r in evals] == [100, 200, 240]
    assert all(int(r["episodes"]) == 2 for r in evals)
    assert [int(p.name) for p in complete_checkpoints(run_dir / "checkpoints")] == [200, 240]
    assert len(complete_checkpoints(run_dir / "best")) == 1
    assert (run_dir / "replay" / "header.json").is_file()
    gifs = list((run_dir / "videos").glob("*.gif"))
    assert gifs and all(g.stat().st_size > 1000 for g in gifs)


@pytest.mark.parametrize("mirror,overlap,update_every,n_step", [(True, True, 1, 1),
                                                                (True, False, 3, 3),
                                                                (False, True, 3, 2)])
def test_fast_path_switches_keep_the_update_count_and_resume(tmp_path, mirror, overlap,
                                                             update_every, n_step):
    """The device mirror (forced on: the CPU is JAX's device here), the overlapped update and
    fewer, larger update calls run the same number of gradient steps, and resume with them;
    n-step sampling goes through both batch paths (mirror and host sampler)."""
    raw = tiny_raw("topdown", total=120, update_every=update_every, overlap=overlap)
    raw["env"]["frame_stack"] = 2
    raw["perf"]["device_mirror"] = mirror
    raw["replay"]["n_step"] = n_step
    results = tmp_path / "r"
    assert cli_main("topdown", ["--config", str(write_config(tmp_path, raw)),
                                "--results-dir", str(results)]) == 0
    run_dir = only_run_dir(results)
    assert cli_main("topdown", ["--resume", str(run_dir), "--total-timesteps", "240"]) == 0
    progress = read_csv(run_dir / "progress.csv")
    assert [int(r["step"]) for r in progress] == list(range(20, 241, 20))
    # 2 envs, utd 1: 2 gradient steps per vector step after warm-up, in calls of 2*update_every.
    calls = [(s - 60) // 2 // update_every for s in range(20, 241, 20)]
    assert [int(r["updates"]) for r in progress] == [2 * update_every * max(c, 0) for c in calls]
    loss = float(progress[-1]["critic_loss"])
    assert loss == loss and loss > 0
    assert float(progress[-1]["time_compile_s"]) > 0


@pytest.mark.parametrize("obs_mode", ["topdown", "vector"])
def test_the_dispatch_thread_changes_no_result(tmp_path, obs_mode):
    """Making the loop's device calls (mirror uploads, act, update) from a background thread
    makes the same calls in the same order as making them in the loop's thread: same episodes,
    losses, evaluations and final parameters, bit for bit; so does queuing each update before
    waiting for the one in flight (``updates_in_flight: 2``). (Batches from the device mirror,
    drawn on the loop's thread: the host sampler's prefetching threads draw from whatever the
    buffer holds when they run, so their runs are not repeatable with or without it.)"""
    import jax
    import numpy as np

    from dodgerl.evaluate import load_agent

    outcomes = []
    for threaded, in_flight in ((False, 1), (True, 1), (True, 2)):
        raw = tiny_raw(obs_mode, total=160, dispatch_thread=threaded, overlap=True,
                       updates_in_flight=in_flight)
        raw["env"]["level"] = 2  # episodes end within the run
        raw["perf"]["device_mirror"] = True
        results = tmp_path / f"r{int(threaded)}{in_flight}"
        assert cli_main(obs_mode, ["--config", str(write_config(tmp_path, raw)),
                                   "--results-dir", str(results)]) == 0
        run_dir = only_run_dir(results)
        progress = read_csv(run_dir / "progress.csv")
        evals = read_csv(run_dir / "eval.csv")
        loaded = load_agent(run_dir, which="latest")
        assert loaded.meta["step"] == 160
        outcomes.append(([(r["step"], r["episodes"], r["updates"], r["train_return"], r["critic_loss"])
                          for r in progress],
                         [(r["step"], r["mean_return"], r["mean_length"]) for r in evals],
                         jax.tree_util.tree_leaves(loaded.agent)))
    (progress1, evals1, leaves1), (progress2, evals2, leaves2), (progress3, evals3, leaves3) = outcomes
    assert int(progress1[-1][2]) == 160 - 60 and int(progress1[-1][1]) >= 2
    assert progress2 == progress1 and evals2 == evals1
    assert progress3 == progress1 and evals3 == evals1
    for leaves in (leaves2, leaves3):
        assert len(leaves) == len(leaves1)
        for a, b in zip(leaves1, leaves):
            if hasattr(a, "dtype") and jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
                a, b = jax.random.key_data(a), jax.random.key_data(b)
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_env_subprocesses_and_background_evaluation_do_not_change_a_run(tmp_path):
    """Training envs in subprocesses (2 per process), evaluation episodes in subprocesses,
    evaluations of a CPU copy of the agent in a background thread, evaluations in separate
    processes (in the background or waited for), and a background evaluation of a copy kept on
    the training device give the run that stepping and evaluating
    everything in this process gives: same episodes, losses, evaluations, best/ checkpoint and
    GIFs of the best policy; a resumed run too. Each background evaluation also with the loop's
    device calls on the dispatch thread, which then makes the evaluated copy of the agent in
    order with the updates while the loop goes on."""
    import jax
    import numpy as np

    from dodgerl.evaluate import load_agent

    outcomes = []
    background = [{"eval_in_background": True}, {"eval_workers": 2, "eval_in_background": True},
                  {"eval_in_background": True, "eval_on_device": True}]
    for i, switches in enumerate([{}, {"async_envs": True, "envs_per_worker": 2,
                                       "eval_async_envs": True, "eval_in_background": True},
                                  {"eval_workers": 2, "eval_in_background": True}, {"eval_workers": 3},
                                  {"eval_in_background": True, "eval_on_device": True, "eval_async_envs": True},
                                  *({**b, "dispatch_thread": True} for b in background)]):
        raw = tiny_raw("vector", total=200, n_envs=4, eval_episodes=3, eval_freq=40, **switches)
        raw["env"]["level"] = 2  # episodes end within the run
        # Batches drawn on the loop's thread (the mirror), not by prefetching sampler threads,
        # whose draws depend on how much of the buffer they happened to see.
        raw["perf"]["device_mirror"] = True
        results = tmp_path / f"r{i}"
        assert cli_main("vector", ["--config", str(write_config(tmp_path, raw)),
                                   "--results-dir", str(results)]) == 0
        run_dir = only_run_dir(results)
        assert cli_main("vector", ["--resume", str(run_dir), "--total-timesteps", "320"]) == 0
        progress = read_csv(run_dir / "progress.csv")
        evals = read_csv(run_dir / "eval.csv")
        best = [int(p.name) for p in (run_dir / "best").iterdir() if p.name.isdigit()]
        videos = sorted((p.name, p.read_bytes()) for p in (run_dir / "videos").glob("*.gif"))
        # best/ is saved from the evaluated copy, on the checkpoint thread: the same parameters
        best_params = [np.asarray(x) for x in jax.tree_util.tree_leaves(
            (lambda a: (a.actor.params, a.critic.params))(load_agent(run_dir, which="best").agent))]
        outcomes.append((
            [(r["step"], r["episodes"], r["train_return"], r["critic_loss"]) for r in progress],
            [(r["step"], r["mean_return"], r["min_return"], r["mean_length"]) for r in evals],
            sorted(best),
            videos,
            best_params,
        ))
    for outcome in outcomes[1:]:
        assert outcome[:4] == outcomes[0][:4]
        for a, b in zip(outcome[4], outcomes[0][4], strict=True):
            np.testing.assert_array_equal(a, b)
    progress, evals, best, videos, _ = outcomes[0]
    assert len(videos) >= 2  # a GIF for each improvement of the best, the same from every variant
    assert [int(r[0]) for r in evals] == list(range(40, 321, 40))
    returns = [float(r[1]) for r in evals]
    assert int(evals[returns.index(max(returns))][0]) == max(best)  # best/ holds the best policy
    assert int(progress[-1][1]) >= 4  # episodes ended, so autoreset was exercised
    assert min(float(r[3]) for r in evals) < 60  # and some evaluation episodes ended early


def test_resume_continues_steps_logs_and_buffer(tmp_path):
    config = write_config(tmp_path, tiny_raw("vector", total=200))
    results = tmp_path / "r"
    assert cli_main("vector", ["--config", str(config), "--results-dir", str(results)]) == 0
    run_dir = only_run_dir(results)
    header = yaml.safe_load((run_dir / "replay" / "header.json").read_text())
    assert cli_main("vector", ["--resume", str(run_dir), "--total-timesteps", "400"]) == 0
    progress = read_csv(run_dir / "progress.csv")
    steps = [int(r["step"]) for r in progress]
    assert steps == list(range(20, 401, 20)), "a gap or a repeat in progress.csv"
    updates = [int(r["updates"]) for r in progress]
    assert updates[-1] == 400 - 60, "warm-up must not be repeated after resume"
    assert [int(r["step"]) for r in read_csv(run_dir / "eval.csv")] == [100, 200, 300, 400]
    header_after = yaml.safe_load((run_dir / "replay" / "header.json").read_text())
    assert header_after["transitions_added"] > header["transitions_added"] >= 200
    assert only_run_dir(results) == run_dir  # no second run directory
    assert not (run_dir / "abandoned").exists()  # from the newest checkpoint nothing is set aside


def test_resume_from_a_named_checkpoint(tmp_path):
    config = write_config(tmp_path, tiny_raw("vector", total=200, keep_checkpoints=3))
    results = tmp_path / "r"
    assert cli_main("vector", ["--config", str(config), "--results-dir", str(results)]) == 0
    run_dir = only_run_dir(results)
    evals_before = read_csv(run_dir / "eval.csv")
    assert [int(r["step"]) for r in evals_before] == [100, 200]
    # Checkpoint 100 was saved before the evaluation of step 100 started, and says so.
    assert read_meta(run_dir / "checkpoints" / "100")["next_eval"] == 100
    # As if killed right after that checkpoint: no row, no best/ from step 100 on.
    with (run_dir / "eval.csv").open("w", newline="") as f:
        csv.DictWriter(f, list(evals_before[0])).writeheader()
    shutil.rmtree(run_dir / "best")
    assert cli_main("vector", ["--resume", str(run_dir / "checkpoints" / "100"), "--total-timesteps", "200"]) == 0
    steps = [int(r["step"]) for r in read_csv(run_dir / "progress.csv")]
    assert steps == list(range(20, 201, 20))
    # The resumed run evaluates step 100 first, on the same agent: the same row again.
    evals = read_csv(run_dir / "eval.csv")
    assert [int(r["step"]) for r in evals] == [100, 200]
    assert (evals[0]["mean_return"], evals[0]["mean_length"]) == (
        evals_before[0]["mean_return"], evals_before[0]["mean_length"])
    assert complete_checkpoints(run_dir / "best")
    # What the first run saved after step 100 is kept, out of the resumed run's way: its
    # checkpoint 200 and the logs as they were. Checkpoint 200 is now the resumed run's own.
    [aside] = list((run_dir / "abandoned").iterdir())
    assert aside.name.endswith("_after_100")
    assert [p.name for p in complete_checkpoints(aside / "checkpoints")] == ["200"]
    assert read_meta(aside / "checkpoints" / "200")["resumes"] == 0
    assert read_meta(run_dir / "checkpoints" / "200")["resumes"] == 1
    assert [int(r["step"]) for r in read_csv(aside / "progress.csv")] == list(range(20, 201, 20))
    # The buffer was rewound to checkpoint 100's commit: 200 transitions added in all, not 300.
    header = json.loads((run_dir / "replay" / "header.json").read_text())
    assert header["transitions_added"] == 200
    assert json.loads((aside / "replay_header.json").read_text())["transitions_added"] == 200
    saved = read_meta(run_dir / "checkpoints" / "200")["replay_header"]
    assert saved["transitions_added"] == 200 and saved["envs"] == header["envs"]


def test_resume_keeps_the_best_saved_after_its_checkpoint_and_rewinds_the_buffer(tmp_path):
    """As after a kill -9 once evaluations after the newest checkpoint had saved best/ and the
    buffer had been committed further: the resume keeps best/ (and counts it, so only a better
    policy replaces it), sets aside no checkpoint, and rewinds the buffer to the checkpoint."""
    config = write_config(tmp_path, tiny_raw("vector", total=200, eval_freq=50, keep_checkpoints=3))
    results = tmp_path / "r"
    assert cli_main("vector", ["--config", str(config), "--results-dir", str(results)]) == 0
    run_dir = only_run_dir(results)
    shutil.rmtree(run_dir / "checkpoints" / "200")  # newest left: 100; the buffer is at 200
    [best_before] = complete_checkpoints(run_dir / "best")
    saved_best = read_meta(best_before)["best_eval"]
    assert saved_best == max(float(r["mean_return"]) for r in read_csv(run_dir / "eval.csv"))
    assert cli_main("vector", ["--resume", str(run_dir), "--total-timesteps", "200"]) == 0
    [aside] = list((run_dir / "abandoned").iterdir())
    assert not (aside / "checkpoints").exists()
    assert json.loads((aside / "replay_header.json").read_text())["transitions_added"] == 200
    header = json.loads((run_dir / "replay" / "header.json").read_text())
    assert header["transitions_added"] == 200  # rewound to 100, then 100 more
    final = read_meta(run_dir / "checkpoints" / "200")
    assert final["resumes"] == 1 and final["best_eval"] >= saved_best
    [best_after] = complete_checkpoints(run_dir / "best")
    assert read_meta(best_after)["best_eval"] == final["best_eval"]
    if final["best_eval"] == saved_best:
        assert best_after.name == best_before.name  # not replaced by a policy no better


def test_the_last_checkpoint_comes_after_the_final_evaluation(tmp_path):
    """A run ending on a checkpoint step that is not an evaluation step: its last checkpoint is
    saved after the final evaluation and counts it in best_eval (the periodic one is not kept
    in its place)."""
    config = write_config(tmp_path, tiny_raw("vector", total=250, checkpoint_freq=50, keep_checkpoints=2))
    results = tmp_path / "r"
    assert cli_main("vector", ["--config", str(config), "--results-dir", str(results)]) == 0
    run_dir = only_run_dir(results)
    evals = read_csv(run_dir / "eval.csv")
    assert [int(r["step"]) for r in evals] == [100, 200, 250]
    meta = read_meta(run_dir / "checkpoints" / "250")
    assert meta["wall_time_s"] >= float(evals[-1]["wall_time_s"])
    assert meta["best_eval"] == max(float(r["mean_return"]) for r in evals)
    assert meta["next_eval"] > 250


def test_half_written_checkpoint_is_skipped(tmp_path, capsys):
    config = write_config(tmp_path, tiny_raw("vector", total=200))
    results = tmp_path / "r"
    assert cli_main("vector", ["--config", str(config), "--results-dir", str(results)]) == 0
    run_dir = only_run_dir(results)
    ckpts = run_dir / "checkpoints"
    # A copy of the newest checkpoint under a later step, with its array data truncated.
    broken = ckpts / "300"
    shutil.copytree(ckpts / "200", broken)
    for f in (broken / "agent").rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and "METADATA" not in f.name:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
    # And an orbax temporary directory left by a save killed half-way.
    (ckpts / "400.orbax-checkpoint-tmp-123").mkdir()
    assert cli_main("vector", ["--resume", str(run_dir), "--total-timesteps", "240"]) == 0
    out = capsys.readouterr().out
    assert "resumed from" in out and "checkpoints/200" in out


def test_kill_9_then_resume_continues_from_last_complete_checkpoint(tmp_path):
    rng = random.Random(0)
    raw = tiny_raw("vector", total=100_000, checkpoint_freq=40, eval_freq=0, log_freq=20)
    config = write_config(tmp_path, raw)
    results = tmp_path / "r"
    env = dict(os.environ, SDL_VIDEODRIVER="dummy", PYTHONUNBUFFERED="1")
    script = str(REPO / "experiments" / "vector_sac.py")
    proc = subprocess.Popen([sys.executable, script, "--config", str(config), "--results-dir", str(results)],
                            env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir = None
    for trial in range(3):
        deadline = time.time() + 120
        while time.time() < deadline:  # wait for a first checkpoint, then kill at a random moment
            runs = list(results.glob("*/*"))
            if runs and complete_checkpoints(runs[0] / "checkpoints"):
                run_dir = runs[0]
                break
            time.sleep(0.2)
        assert run_dir is not None, "no checkpoint appeared"
        time.sleep(rng.uniform(0.0, 2.0))
        proc.kill()
        proc.wait()
        last = complete_checkpoints(run_dir / "checkpoints")[-1]
        proc = subprocess.Popen([sys.executable, script, "--resume", str(run_dir)], env=env, cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        line = ""
        for line in proc.stdout:  # the first thing it reports is where it resumed from
            if "resumed from" in line:
                break
        assert f"resumed from {last} at step {last.name}" in line, (line, last)
        time.sleep(rng.uniform(1.0, 3.0))
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0
    steps = [int(r["step"]) for r in read_csv(run_dir / "progress.csv")]
    assert steps == sorted(set(steps)), "progress.csv has a repeat after resume"
    assert steps == list(range(20, steps[-1] + 1, 20)), "progress.csv has a gap after resume"


@pytest.mark.parametrize("to_group,threaded", [(False, False), (True, False), (False, True)],
                         ids=["process", "process-group-async-envs", "process-dispatch-thread"])
def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path, to_group, threaded):
    # to_group: the signal reaches every process of the group, env subprocesses included, as
    # Ctrl-C in a terminal, `timeout` or `kill -- -PGID` do; the workers must leave it to the
    # training process, which checkpoints and then closes them. threaded: the device calls are
    # made by the dispatch thread (with the replay mirror), whose queue the checkpoint drains.
    raw = tiny_raw("vector", total=1_000_000, checkpoint_freq=100_000, eval_freq=0,
                   async_envs=to_group, dispatch_thread=threaded)
    raw["perf"]["device_mirror"] = threaded
    config = write_config(tmp_path, raw)
    results = tmp_path / "r"
    env = dict(os.environ, SDL_VIDEODRIVER="dummy", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "experiments" / "vector_sac.py"), "--config", str(config),
         "--results-dir", str(results)],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=to_group)
    deadline = time.time() + 120
    run_dir = None
    while time.time() < deadline:
        runs = list(results.glob("*/*"))
        progress = runs[0] / "progress.csv" if runs else None
        if progress is not None and progress.exists() and len(read_csv(progress)) >= 10:  # updating
            run_dir = runs[0]
            break
        time.sleep(0.2)
    assert run_dir is not None
    assert not complete_checkpoints(run_dir / "checkpoints")
    if to_group:
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "SIGTERM received" in out
    ckpts = complete_checkpoints(run_dir / "checkpoints")
    assert len(ckpts) == 1 and int(ckpts[0].name) >= 200


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.n_envz=2", "unknown config key train.n_envz"),
        ("train.n_envs=two", "train.n_envs: expected an integer"),
        ("train.n_envs=0", "train.n_envs: must be >= 1"),
        ("replay.n_step=0", "replay.n_step: must be >= 1"),
        ("perf.writeback_s=-1", "perf.writeback_s: must be a finite number >= 0"),
        ("env.image_size=32", "env.image_size: must be in 64..256"),
        ("env.obs_mode=lidar", "env.obs_mode"),
        ("agent.actor_lr=-1", "actor_lr"),
        ("agent.no_such_key=1", "no_such_key"),
        ("bogus=1", "unknown config key 'bogus'"),
        ("train.total_timesteps", "expected key=value"),
        ("perf.envs_per_worker=3", "perf.envs_per_worker: must divide train.n_envs (16), got 3"),
        ("perf.updates_in_flight=3", "perf.updates_in_flight: must be 1 or 2"),
        ("perf.dispatch_thread=sometimes", "perf.dispatch_thread"),
    ],
)
def test_bad_set_values_fail_before_any_work(tmp_path, capsys, override, message):
    assert cli_main("topdown", ["--results-dir", str(tmp_path), "--set", override]) == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir()), "a run directory was created for a bad config"


def test_scientific_notation_is_a_number(tmp_path):
    path = write_config(tmp_path, tiny_raw())
    path.write_text(path.read_text() + "\n")
    config = load_config(path, ["agent.actor_lr=1e-3", "agent.critic_lr=2E-4"])
    assert config.agent.actor_lr == 1e-3 and config.agent.critic_lr == 2e-4
    raw = path.read_text().replace("batch_size: 16", "batch_size: 16\n  temperature_lr: 5e-4")
    path.write_text(raw)
    assert load_config(path).agent.temperature_lr == 5e-4


def test_bad_config_file_names_the_key(tmp_path):
    raw = tiny_raw()
    raw["replay"]["buffer_sise"] = 10
    with pytest.raises(ConfigError, match="replay.buffer_sise"):
        config_from_dict(raw)
    raw = tiny_raw()
    raw["train"]["video"] = "yes"
    with pytest.raises(ConfigError, match="train.video: expected true or false"):
        config_from_dict(raw)
    for perf, message in [({"eval_workers": 11}, r"perf.eval_workers: must be in \[0, train.eval_episodes=10\]"),
                           ({"eval_workers": -1}, "perf.eval_workers: must be in"),
                           ({"eval_workers": 2, "eval_async_envs": True}, "perf.eval_workers: .*exclude each other")]:
        with pytest.raises(ConfigError, match=message):
            config_from_dict({"perf": perf})
    with pytest.raises(ConfigError, match="perf.eval_on_device: needs perf.eval_in_background"):
        config_from_dict({"perf": {"eval_on_device": True, "eval_in_background": False}})
    with pytest.raises(ConfigError, match=r"train.overlap: a speed setting.*perf.overlap"):
        config_from_dict({"train": {"overlap": False}})


def test_shipped_configs_load_and_match_the_seed():
    seed = load_config(REPO / "configs" / "sac_topdown_seed256_easy.yaml")
    easy = load_config(REPO / "configs" / "sac_topdown_cnn_easy.yaml")
    for cfg in (seed, easy):  # the seed's side, network, batch, buffer and budget
        assert (cfg.env.level, cfg.env.image_size, cfg.env.obs_mode) == (1, 256, "topdown")
        assert tuple(cfg.agent.net_arch) == (256, 256) and cfg.agent.batch_size == 64
        assert (cfg.replay.buffer_size, cfg.train.learning_starts, cfg.train.total_timesteps) == (100_000, 5_000, 500_000)
    # the seed's own settings (SB3's CnnPolicy): every pixel switch off
    assert (seed.env.frame_stack, seed.agent.augmentation, seed.agent.encoder_downsample) == (1, False, 1)
    assert (seed.agent.encoder_output, seed.agent.encoder_features, seed.replay.n_step) == ("relu", 512, 1)
    assert seed.train.n_envs == 1
    # the main command's: the pixel recipe, whose pooling and shift follow the image side
    assert (easy.env.frame_stack, easy.agent.augmentation, easy.replay.n_step) == (3, True, 3)
    assert (easy.agent.encoder_output, easy.agent.encoder_features) == ("layernorm_tanh", 50)
    assert easy.agent.encoder_downsample is None and easy.agent.augmentation_pad is None
    hard = load_config(REPO / "configs" / "sac_topdown_cnn_hard.yaml")
    assert (hard.env.level, hard.agent.symmetry) == (2, "d4")
    replace = dataclasses.replace
    assert (hard.env, replace(hard.agent, symmetry="none"), hard.replay, hard.train) == (
        replace(easy.env, level=2), easy.agent, easy.replay, easy.train)  # the same recipe
    assert load_config(REPO / "configs" / "sac_vector_easy.yaml").env.obs_mode == "vector"
    assert load_config(REPO / "configs" / "sac_vector_hard.yaml").env.level == 2
    drq = load_config(REPO / "configs" / "sac_topdown_drq84_easy.yaml")
    assert (drq.env.image_size, drq.env.frame_stack, drq.agent.augmentation) == (84, 3, True)
    assert (drq.env.level, drq.train.n_envs, drq.agent.batch_size) == (1, 16, 64)


def test_every_config_in_configs_loads():
    paths = sorted((REPO / "configs").glob("*.yaml"))
    assert len(paths) >= 5
    for path in paths:
        load_config(path)  # raises ConfigError naming the key on any bad entry


def test_help_documents_every_option():
    result = run_cli("topdown", "--help", timeout=60)
    assert result.returncode == 0
    for option in ("--level", "--config", "--seed", "--total-timesteps", "--results-dir", "--resume", "--set"):
        assert option in result.stdout


def test_a_failed_device_call_on_the_dispatch_thread_reaches_the_caller(tmp_path, monkeypatch):
    """An update that fails on the dispatch thread (here: refused after a few calls) raises in
    train()'s caller, promptly (the run stops within a few steps of the failure), the dispatch
    thread does not outlive the call, and the checkpoint saved before the failure stays
    complete."""
    import threading

    from dodgerl.train import train
    from dodgerl.agents import sac

    raw = tiny_raw("topdown", total=400, dispatch_thread=True, checkpoint_freq=100, eval_freq=0)
    raw["perf"]["device_mirror"] = True
    original, calls = sac.SACAgent.update_from, [0]

    def update_then_fail(self, *args, **kwargs):
        calls[0] += 1
        if threading.current_thread() is threading.main_thread():
            raise AssertionError("the update was made on the loop's thread")
        if calls[0] > 30:  # step 122 of 2 envs: after the checkpoint at step 100
            raise RuntimeError("device refused the update")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(sac.SACAgent, "update_from", update_then_fail)
    with pytest.raises(RuntimeError, match="device refused the update"):
        train(config_from_dict(raw), results_dir=tmp_path / "r")
    assert calls[0] == 31  # stopped at the first failure
    assert not [t for t in threading.enumerate() if t.name.startswith("dispatch")]
    run_dir = only_run_dir(tmp_path / "r")
    assert [int(p.name) for p in complete_checkpoints(run_dir / "checkpoints")] == [100]
    rows = read_csv(run_dir / "progress.csv")
    assert int(rows[-1]["step"]) <= 140  # the loop did not run on long after the failure


def test_an_exception_mid_run_leaves_no_process_and_keeps_the_checkpoints(tmp_path, monkeypatch):
    """A failure inside the loop (here the replay refusing a write) reaches the caller of
    train(), no env or evaluation process outlives the call, and the checkpoint saved before the
    failure stays complete (a researcher's notebook is not left with orphaned processes)."""
    import multiprocessing

    from dodgerl.train import train
    from dodgerl.replay import ReplayBuffer

    raw = tiny_raw("vector", total=400, n_envs=4, async_envs=True, envs_per_worker=2,
                   eval_workers=2, eval_in_background=True, eval_freq=40, checkpoint_freq=100)
    original_add, calls = ReplayBuffer.add, [0]

    def add_then_fail(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] > 40:  # step 164 of 4 envs: after the checkpoint at step 100
            raise RuntimeError("replay refused the write")
        return original_add(self, *args, **kwargs)

    monkeypatch.setattr(ReplayBuffer, "add", add_then_fail)
    before = set(multiprocessing.active_children())
    with pytest.raises(RuntimeError, match="replay refused the write"):
        train(config_from_dict(raw), results_dir=tmp_path / "r")
    assert set(multiprocessing.active_children()) - before == set()
    run_dir = only_run_dir(tmp_path / "r")
    assert [int(p.name) for p in complete_checkpoints(run_dir / "checkpoints")] == [100]
    # The replay declares what the checkpoint saw (100 transitions), not the 160 added after it.
    header = json.loads((run_dir / "replay" / "header.json").read_text())
    assert header["transitions_added"] == 100


def test_a_jax_without_cpu_backend_trains_and_background_cpu_evaluation_says_why_not(
        tmp_path, monkeypatch, capsys):
    """JAX_PLATFORMS=cuda leaves JAX without a CPU backend (the benchmark suite's --device gpu):
    training must not ask for the CPU unless it evaluates a CPU copy in the background, and then
    it stops before training with an error naming the setting."""
    import jax

    real_devices = jax.devices

    def devices(backend=None):
        if backend == "cpu":
            raise RuntimeError("Unknown backend cpu. Available backends are ['cuda']")
        return real_devices(backend)

    monkeypatch.setattr(jax, "devices", devices)
    raw = tiny_raw("vector", total=120, eval_episodes=2, eval_freq=60)
    results = tmp_path / "ok"
    assert cli_main("vector", ["--config", str(write_config(tmp_path, raw)),
                               "--results-dir", str(results)]) == 0
    assert [int(r["step"]) for r in read_csv(only_run_dir(results) / "eval.csv")] == [60, 120]
    raw = tiny_raw("vector", total=120, eval_episodes=2, eval_freq=60, eval_in_background=True)
    capsys.readouterr()
    assert cli_main("vector", ["--config", str(write_config(tmp_path, raw)),
                               "--results-dir", str(tmp_path / "bg")]) != 0
    assert re.search("eval_in_background.*no CPU backend.*eval_on_device", capsys.readouterr().err)
    assert all(not read_csv(p) for p in (tmp_path / "bg").rglob("progress.csv"))  # stopped before training


def run_until_a_save_error(tmp_path: Path, match: str) -> tuple[Path, list[int]]:
    """A 400-step vector run with checkpoints every 100 steps and progress rows every 20, which
    must fail with an OSError matching ``match``: its run directory and progress rows' steps."""
    config = write_config(tmp_path, tiny_raw("vector", total=400, eval_freq=0, checkpoint_freq=100,
                                             log_freq=20))
    results = tmp_path / "r"
    with pytest.raises(OSError, match=match):
        cli_main("vector", ["--config", str(config), "--results-dir", str(results)])
    run_dir = only_run_dir(results)
    return run_dir, [int(r["step"]) for r in read_csv(run_dir / "progress.csv")]


def test_a_save_failing_on_the_checkpoint_thread_stops_the_run_at_the_next_progress_row(tmp_path, monkeypatch):
    """Periodic checkpoints are saved by the checkpoint thread while the loop goes on; one that
    fails there (before Orbax even starts writing) stops the run at one of the loop's next
    progress rows (the first after the thread has run), with the error, not at the end, and the
    checkpoint before it stays complete."""
    import threading

    from dodgerl.checkpoint import RunCheckpoints

    original, threads = RunCheckpoints.save, []

    def fail_at_200(self, step, *args, **kwargs):
        threads.append(threading.current_thread().name)
        if step == 200:
            raise OSError("no space left (injected)")
        return original(self, step, *args, **kwargs)

    monkeypatch.setattr(RunCheckpoints, "save", fail_at_200)
    run_dir, steps = run_until_a_save_error(tmp_path, "no space left")
    assert steps and 200 <= steps[-1] <= 260  # a row or three after the failed save, not the end (400)
    assert threads and all(name.startswith("checkpoint") for name in threads)
    assert [int(p.name) for p in complete_checkpoints(run_dir / "checkpoints")] == [100]


def test_a_failed_background_save_stops_the_run_at_the_next_progress_row(tmp_path, monkeypatch):
    """Periodic checkpoints are written in Orbax's background thread; if one fails (a full disk),
    the loop raises at its next progress row instead of training on until the next checkpoint."""
    from dodgerl.checkpoint import RunCheckpoints

    def failing(self):
        if self._latest.all_steps():  # after the first periodic checkpoint
            raise OSError("disk full (injected)")

    monkeypatch.setattr(RunCheckpoints, "check_for_errors", failing)
    _, steps = run_until_a_save_error(tmp_path, "disk full")
    assert steps and steps[-1] <= 120  # the row at or right after the checkpoint of step 100
