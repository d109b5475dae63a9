"""benchmarks/sb3_gym.py: imports without SB3; with SB3 installed, a tiny Pendulum run writes
config.yaml, eval.csv and progress.csv in dodgerl's layout (skipped where SB3 is absent)."""

import csv
from pathlib import Path

import pytest
import yaml

from benchmarks import sb3_gym


def test_imports_and_parses_without_sb3():
    args = sb3_gym.parse_args(["--env-id", "dodgerl/Dodge-v0", "--seed", "3"])
    assert (args.learning_starts, args.eval_freq, args.eval_episodes, args.eval_seed) == (
        10000,
        10000,
        10,
        1000000,
    )
    assert sb3_gym.run_dir_of(Path("r"), args.env_id, args.seed) == Path("r/sb3_dodgerl_Dodge-v0/3")
    with pytest.raises(SystemExit):
        sb3_gym.parse_args(["--env-id", "Pendulum-v1", "--eval-freq", "0"])


def test_tiny_pendulum_run_writes_dodgerl_logs(tmp_path):
    pytest.importorskip("stable_baselines3")
    rc = sb3_gym.main(
        [
            "--env-id",
            "Pendulum-v1",
            "--seed",
            "1",
            "--total-timesteps",
            "2000",
            "--eval-freq",
            "1000",
            "--eval-episodes",
            "2",
            "--eval-seed",
            "7",
            "--learning-starts",
            "1950",
            "--device",
            "cpu",
            "--torch-threads",
            "1",
            "--results-dir",
            str(tmp_path),
        ]
    )
    assert rc == 0
    run = tmp_path / "sb3_Pendulum-v1" / "1"
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["seed"] == 1 and config["env"]["id"] == "Pendulum-v1"
    assert config["train"]["learning_starts"] == 1950 and config["agent"]["batch_size"] == 256
    with (run / "eval.csv").open() as f:
        evals = list(csv.DictReader(f))
    assert [int(r["step"]) for r in evals] == [1000, 2000]
    assert list(evals[0]) == list(sb3_gym.EVAL_FIELDS)
    assert all(int(r["episodes"]) == 2 and float(r["mean_length"]) == 200 for r in evals)
    with (run / "progress.csv").open() as f:
        progress = list(csv.DictReader(f))
    assert [int(r["step"]) for r in progress] == [1000, 2000]
    assert all(float(r["env_steps_per_s"]) > 0 for r in progress)
    # a second run into the same directory is refused without --overwrite
    assert (
        sb3_gym.main(["--env-id", "Pendulum-v1", "--seed", "1", "--results-dir", str(tmp_path)])
        == 2
    )


def test_eval_fields_match_dodgerl():
    from dodgerl.train.logs import EVAL_FIELDS

    assert sb3_gym.EVAL_FIELDS == EVAL_FIELDS
