"""TensorBoard event files beside progress.csv and eval.csv: every row's numbers as scalars at
its step, a resume's purge, a record cut short by a kill, and the train.tensorboard key."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from dodgerl.config import ConfigError, TrainConfig, config_from_dict
from dodgerl.train.logs import EVAL_FIELDS, PROGRESS_FIELDS, CsvLog, read_tensorboard


def rows(n: int, start: int = 1) -> list[dict]:
    return [{"step": 100 * i, "episodes": i, "critic_loss": 1.0 / i, "train_return": "",
             "env_steps_per_s": 12.5 * i} for i in range(start, start + n)]


def write(path: Path, written: list[dict], resume_step: int | None = None,
          tensorboard: Path | None = None) -> None:
    log = CsvLog(path, PROGRESS_FIELDS, resume_step, tensorboard=tensorboard)
    for row in written:
        log.write(row)
    log.close()


def test_every_row_goes_to_the_event_file_as_scalars_at_its_step(tmp_path):
    board = tmp_path / "tensorboard"
    write(tmp_path / "progress.csv", rows(3), tensorboard=board)
    scalars = read_tensorboard(board)
    assert sorted(scalars) == ["progress/critic_loss", "progress/env_steps_per_s", "progress/episodes"]
    assert scalars["progress/critic_loss"] == [(100, 1.0), (200, 0.5), (300, pytest.approx(1 / 3))]
    assert scalars["progress/episodes"] == [(100, 1.0), (200, 2.0), (300, 3.0)]
    assert list(board.iterdir()) == [board / "progress"]  # one TensorBoard run per CSV
    with (tmp_path / "progress.csv").open(newline="") as f:
        assert [r["step"] for r in csv.DictReader(f)] == ["100", "200", "300"]  # the CSV as before


def test_a_resume_drops_from_tensorboard_what_it_drops_from_the_csv(tmp_path):
    board = tmp_path / "tensorboard"
    write(tmp_path / "progress.csv", rows(5), tensorboard=board)  # a kill after step 500
    write(tmp_path / "progress.csv", [{"step": 400, "critic_loss": 9.0}], resume_step=300,
          tensorboard=board)  # resumed from the checkpoint of step 300
    scalars = read_tensorboard(board)
    assert scalars["progress/critic_loss"] == [(100, 1.0), (200, 0.5), (300, pytest.approx(1 / 3)),
                                               (400, 9.0)]
    assert [s for s, _ in scalars["progress/episodes"]] == [100, 200, 300]


def test_a_record_cut_short_by_a_kill_is_the_end_of_its_file(tmp_path):
    board = tmp_path / "tensorboard"
    write(tmp_path / "progress.csv", rows(4), tensorboard=board)
    (path,) = (board / "progress").iterdir()
    path.write_bytes(path.read_bytes()[:-7])
    assert [s for s, _ in read_tensorboard(board)["progress/critic_loss"]] == [100, 200, 300]


def test_eval_rows_go_to_their_own_run(tmp_path):
    board = tmp_path / "tensorboard"
    log = CsvLog(tmp_path / "eval.csv", EVAL_FIELDS, None, tensorboard=board)
    log.write({"step": 1000, "mean_return": -120.5, "std_return": 3.0, "min_return": -125.0,
               "max_return": -117.0, "mean_length": 200.0, "episodes": 10, "wall_time_s": 4.2})
    log.close()
    assert list(board.iterdir()) == [board / "eval"]
    assert read_tensorboard(board)["eval/mean_return"] == [(1000, -120.5)]


def test_without_tensorboard_no_event_file_is_written(tmp_path):
    write(tmp_path / "progress.csv", rows(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["progress.csv"]


def test_the_tensorboard_key_is_on_by_default_and_validated():
    assert TrainConfig().tensorboard is True
    assert config_from_dict({"train": {"tensorboard": False}}).train.tensorboard is False
    with pytest.raises(ConfigError, match=r"train\.tensorboard: expected true or false"):
        config_from_dict({"train": {"tensorboard": "yes"}})


def test_a_run_writes_its_progress_and_eval_rows_to_tensorboard(tmp_path):
    from dodgerl import cli

    results = tmp_path / "results"
    tiny = ["agent.net_arch=[16,16]", "agent.batch_size=16", "train.total_timesteps=200",
            "train.learning_starts=100", "train.eval_freq=100", "train.eval_episodes=1",
            "train.log_freq=100", "train.progress_bar=false", "train.video=false",
            "replay.buffer_size=500", "env.max_episode_steps=20"]
    argv = ["--env-id", "Pendulum-v1", "--results-dir", str(results)]
    assert cli.main("vector", argv + [a for s in tiny for a in ("--set", s)]) == 0
    (run_dir,) = (results / "sac_gym").iterdir()
    scalars = read_tensorboard(run_dir / "tensorboard")
    for name, tag in (("progress.csv", "progress/episodes"), ("eval.csv", "eval/mean_return")):
        with (run_dir / name).open(newline="") as f:
            logged = [(int(r["step"]), float(r[tag.split("/")[1]])) for r in csv.DictReader(f)]
        assert scalars[tag] == [(s, pytest.approx(v, rel=1e-6)) for s, v in logged]
