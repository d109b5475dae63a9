"""Using what a run kept: load its best policy or a checkpoint, evaluate it (dodgerl.evaluate)."""

from __future__ import annotations

import numpy as np
import pytest

from dodgerl.checkpoint import CheckpointError, complete_checkpoints
from dodgerl.cli import main as cli_main
from dodgerl.evaluate import evaluate, load_agent, main

from .test_train import only_run_dir, read_csv, tiny_raw, write_config


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny vector run on level 2 (episodes end) with five evaluations of 3 episodes."""
    tmp = tmp_path_factory.mktemp("evaluate")
    raw = tiny_raw("vector", total=200, eval_freq=40, eval_episodes=3)
    raw["env"]["level"] = 2
    assert cli_main("vector", ["--config", str(write_config(tmp, raw)),
                               "--results-dir", str(tmp / "r")]) == 0
    return only_run_dir(tmp / "r")


def test_the_kept_best_policy_reproduces_the_runs_best_evaluation(run_dir):
    evals = read_csv(run_dir / "eval.csv")
    best_row = max(evals, key=lambda r: float(r["mean_return"]))  # the first of equal bests
    loaded = load_agent(run_dir)
    assert loaded.checkpoint.parent.name == "best"
    assert loaded.meta["step"] == int(best_row["step"])
    assert loaded.meta["best_eval"] == float(best_row["mean_return"])
    tc = loaded.config.train
    result = evaluate(loaded.agent, loaded.config.env, tc.eval_episodes, tc.eval_seed)
    row = result.row(loaded.meta["step"], 0.0)
    for field in ("mean_return", "min_return", "max_return", "mean_length"):
        assert row[field] == float(best_row[field]), field


def test_episodes_in_subprocesses_equal_episodes_in_this_process(run_dir):
    loaded = load_agent(run_dir)
    here = evaluate(loaded.agent, loaded.config.env, 7, 500)
    # 6 episodes after the first, at most 2 per subprocess: 3 subprocesses
    apart = evaluate(loaded.agent, loaded.config.env, 7, 500, processes=3)
    np.testing.assert_array_equal(apart.returns, here.returns)
    np.testing.assert_array_equal(apart.lengths, here.lengths)
    assert len(set(here.lengths.tolist())) > 1  # level 2: episodes end at different steps
    with pytest.raises(ValueError, match="processes=-1"):
        evaluate(loaded.agent, loaded.config.env, 3, 500, processes=-1)


def test_latest_and_named_checkpoints_load_and_act(run_dir):
    oldest, newest = complete_checkpoints(run_dir / "checkpoints")
    latest = load_agent(run_dir, which="latest")
    assert latest.checkpoint == newest and latest.meta["step"] == int(newest.name) == 200
    named = load_agent(oldest)
    assert named.checkpoint == oldest and named.meta["step"] == 100
    obs = np.random.default_rng(0).normal(size=(4, 65)).astype(np.float32)
    assert not np.array_equal(np.asarray(latest.agent.act(obs, deterministic=True)),
                              np.asarray(named.agent.act(obs, deterministic=True)))
    np.testing.assert_array_equal(np.asarray(load_agent(newest).agent.act(obs, deterministic=True)),
                                  np.asarray(latest.agent.act(obs, deterministic=True)))
    # More episodes than the run used, from other seeds: the policy is not tied to them.
    result = evaluate(named.agent.policy(), named.config.env, episodes=4, seed=7)
    assert len(result.returns) == 4 and np.all(result.lengths >= 1)


def test_evaluate_cli_reports_and_writes_a_gif(run_dir, tmp_path, capsys):
    gif = tmp_path / "best.gif"
    assert main([str(run_dir), "--episodes", "2", "--gif", str(gif)]) == 0
    out = capsys.readouterr().out
    assert "2 deterministic episodes" in out and "mean return" in out
    assert gif.read_bytes()[:6] in (b"GIF87a", b"GIF89a")
    assert main([str(run_dir), "--episodes", "2", "--stochastic", "--key", "3"]) == 0
    assert "2 stochastic episodes" in capsys.readouterr().out


def test_bad_paths_are_named(run_dir, tmp_path, capsys):
    assert main([str(tmp_path / "missing")]) == 2
    assert "missing: no such file or directory" in capsys.readouterr().err
    assert main([str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        empty = tmp_path / "run"
        empty.mkdir()
        (empty / "config.yaml").write_text((run_dir / "config.yaml").read_text())
        load_agent(empty)
    with pytest.raises(ValueError, match="episodes"):
        evaluate(None, None, episodes=0)
