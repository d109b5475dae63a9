"""Nothing silent, at the level of a run (issue 33): same seed, same run; a bare resume keeps the
launch's budget; damaged files and changed settings end as one error line naming them."""

from __future__ import annotations

import errno

import pytest
import yaml

from dodgerl.checkpoint import complete_checkpoints
from dodgerl.cli import main as cli_main
from tests.test_train import only_run_dir, read_csv, tiny_raw, write_config


def run(tmp_path, raw, name="r", kind=None):
    kind = kind or ("vector" if raw["env"]["obs_mode"] == "vector" else "topdown")
    results = tmp_path / name
    assert cli_main(kind, ["--config", str(write_config(tmp_path, raw)), "--results-dir", str(results)]) == 0
    return only_run_dir(results)


def outcome(run_dir):
    progress = [(r["step"], r["episodes"], r["updates"], r["train_return"], r["critic_loss"])
                for r in read_csv(run_dir / "progress.csv")]
    evals = [(r["step"], r["mean_return"], r["std_return"]) for r in read_csv(run_dir / "eval.csv")]
    return progress, evals


@pytest.mark.parametrize("obs_mode", ["vector", "topdown"])
def test_the_same_seed_gives_the_same_run_with_the_default_settings(tmp_path, obs_mode):
    """Overlapped updates and the sampler's threads (the defaults) do not change the run: the
    sampled indices are drawn in program order."""
    raw = tiny_raw(obs_mode, total=200)
    raw["env"]["level"] = 2  # episodes end within the run
    first, second = outcome(run(tmp_path, raw, "a")), outcome(run(tmp_path, raw, "b"))
    assert int(first[0][-1][2]) == 200 - 60 and first[0][-1][4] != ""
    assert first == second


def test_a_bare_resume_continues_to_the_launchs_budget(tmp_path):
    raw = tiny_raw("vector", total=100_000)
    results = tmp_path / "r"
    config = write_config(tmp_path, raw)
    assert cli_main("vector", ["--config", str(config), "--results-dir", str(results),
                               "--total-timesteps", "160"]) == 0
    run_dir = only_run_dir(results)
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["total_timesteps"] == 160
    assert cli_main("vector", ["--resume", str(run_dir)]) == 0
    assert int(read_csv(run_dir / "progress.csv")[-1]["step"]) == 160  # not the template's 100,000
    assert cli_main("vector", ["--resume", str(run_dir), "--total-timesteps", "200"]) == 0
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["total_timesteps"] == 200


def resume_fails(run_dir, capsys, *extra):
    capsys.readouterr()
    assert cli_main("vector", ["--resume", str(run_dir), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_a_damaged_replay_is_one_error_line_and_fresh_replay_goes_on(tmp_path, capsys):
    run_dir = run(tmp_path, tiny_raw("vector", total=120))
    (run_dir / "replay" / "observations.npy").write_bytes(b"")
    line = resume_fails(run_dir, capsys, "--total-timesteps", "200")
    assert "observations.npy" in line and "--fresh-replay" in line
    assert cli_main("vector", ["--resume", str(run_dir), "--total-timesteps", "200", "--fresh-replay"]) == 0
    assert int(read_csv(run_dir / "progress.csv")[-1]["step"]) == 200
    assert list(run_dir.glob("replay.discarded-*"))  # set aside, not deleted


@pytest.mark.parametrize("text", ["{not json", "[1, 2, 3]"])
def test_a_garbage_replay_header_is_one_error_line(tmp_path, capsys, text):
    run_dir = run(tmp_path, tiny_raw("vector", total=120))
    (run_dir / "replay" / "header.json").write_text(text)
    assert "header.json" in resume_fails(run_dir, capsys, "--total-timesteps", "200")


@pytest.mark.parametrize("section,key,value,was", [("env", "image_size", 84, 64), ("train", "n_envs", 4, 2)])
def test_a_changed_config_yaml_names_the_key_on_resume(tmp_path, capsys, section, key, value, was):
    raw = tiny_raw("topdown" if key == "image_size" else "vector", total=120)
    run_dir = run(tmp_path, raw)
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    saved[section][key] = value
    (run_dir / "config.yaml").write_text(yaml.safe_dump(saved))
    capsys.readouterr()
    kind = "vector" if raw["env"]["obs_mode"] == "vector" else "topdown"
    assert cli_main(kind, ["--resume", str(run_dir), "--total-timesteps", "200"]) == 2
    line = capsys.readouterr().err.strip()
    assert line == (f"error: {section}.{key}: the run was {was}, config.yaml now says {value}; a resumed "
                    "run keeps the settings its checkpoints were made with (restore config.yaml, or "
                    "start a new run)")


def test_a_full_disk_is_one_error_line(tmp_path, capsys, monkeypatch):
    from dodgerl.replay import ReplayBuffer

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.directory / "observations.npy"))

    monkeypatch.setattr(ReplayBuffer, "add", full)
    capsys.readouterr()
    assert cli_main("vector", ["--config", str(write_config(tmp_path, tiny_raw("vector", total=120))),
                               "--results-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "observations.npy: No space left on device" in err[-1]
    with pytest.raises(OSError):  # --debug shows the traceback
        cli_main("vector", ["--config", str(write_config(tmp_path, tiny_raw("vector", total=120))),
                            "--results-dir", str(tmp_path / "d"), "--debug"])


def test_a_newest_checkpoint_without_metadata_is_set_aside_and_its_step_saved_again(tmp_path, capsys):
    """The resume falls back to the previous checkpoint, and the broken folder does not block
    the save of its own step (it moves aside): the run ends with that step saved."""
    run_dir = run(tmp_path, tiny_raw("vector", total=200))
    steps = [int(p.name) for p in complete_checkpoints(run_dir / "checkpoints")]
    assert steps == [100, 200]
    (run_dir / "checkpoints" / "200" / "_CHECKPOINT_METADATA").unlink()
    capsys.readouterr()
    assert cli_main("vector", ["--resume", str(run_dir), "--total-timesteps", "200"]) == 0
    out = capsys.readouterr().out
    assert "resumed from" in out and "/checkpoints/100" in out
    assert [int(p.name) for p in complete_checkpoints(run_dir / "checkpoints")] == [100, 200]
    assert out.strip().splitlines()[-1].startswith("done: 200 env steps")
    assert any((run_dir / "abandoned").rglob("200"))  # the broken folder, kept aside
