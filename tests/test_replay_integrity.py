"""Nothing silent (issue 33): a damaged replay directory is named on reopen, never read as data;
a changed setting names its config key; the sampler's draws do not depend on thread timing;
the free-space check counts what the run's checkpoints will take."""

from __future__ import annotations

import json
import random
import shutil
import threading
import time
import warnings

import numpy as np
import pytest

from dodgerl.replay import ReplayBuffer, ReplayMismatchError
from tests.test_replay_crash import SETTINGS, audit
from tests.test_replay_helpers import ScriptedWriter


def written(tmp_path, steps=70, commit_every=None):
    """A closed buffer of SETTINGS that lapped its ring; returns its directory."""
    directory = tmp_path / "buf"
    buf = ReplayBuffer(directory, **SETTINGS)
    writer = ScriptedWriter(buf)
    for i in range(steps):
        writer.step()
        if commit_every and i % commit_every == 0:
            buf.commit()
    buf.close()
    return directory


def corrupt_error():
    from dodgerl.replay import ReplayCorruptError

    return ReplayCorruptError


def truncate_half(path):
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    return size


def assert_names_fresh_replay(err):
    assert "--fresh-replay" in str(err)


def test_a_half_truncated_observations_file_is_named_not_zero_filled(tmp_path):
    directory = written(tmp_path)
    path = directory / "observations.npy"
    size = truncate_half(path)
    with pytest.raises(corrupt_error()) as info:
        ReplayBuffer(directory, **SETTINGS)
    message = str(info.value)
    assert "observations.npy" in message and f"{size:,}" in message
    assert_names_fresh_replay(info.value)
    assert path.stat().st_size == size // 2  # not re-extended with zeros


def test_a_half_truncated_flags_file_is_named(tmp_path):
    directory = written(tmp_path)
    path = directory / "flags.npy"
    size = truncate_half(path)
    with pytest.raises(corrupt_error(), match="flags.npy") as info:
        ReplayBuffer(directory, **SETTINGS)
    assert_names_fresh_replay(info.value)
    assert path.stat().st_size == size // 2


def test_an_emptied_observations_file_is_named(tmp_path):
    directory = written(tmp_path)
    (directory / "observations.npy").write_bytes(b"")
    with pytest.raises(corrupt_error(), match="observations.npy") as info:
        ReplayBuffer(directory, **SETTINGS)
    assert_names_fresh_replay(info.value)


def test_a_missing_data_file_is_named(tmp_path):
    directory = written(tmp_path)
    (directory / "rewards.npy").unlink()
    with pytest.raises(corrupt_error(), match="rewards.npy.*missing"):
        ReplayBuffer(directory, **SETTINGS)


def test_a_data_file_of_another_dtype_is_named(tmp_path):
    directory = written(tmp_path)
    np.save(directory / "rewards.npy", np.zeros((2, 60), np.float64))
    with pytest.raises(corrupt_error(), match="rewards.npy.*float64"):
        ReplayBuffer(directory, **SETTINGS)


@pytest.mark.parametrize("text,what", [
    ("{not json", "not valid JSON"),
    ("[1, 2, 3]", "not a JSON object"),
    ("", "not valid JSON"),
])
def test_a_garbage_header_is_named(tmp_path, text, what):
    directory = written(tmp_path)
    (directory / "header.json").write_text(text)
    with pytest.raises(corrupt_error()) as info:
        ReplayBuffer(directory, **SETTINGS)
    assert "header.json" in str(info.value) and what in str(info.value)
    assert_names_fresh_replay(info.value)


def test_a_header_missing_a_key_is_named(tmp_path):
    directory = written(tmp_path)
    header = json.loads((directory / "header.json").read_text())
    del header["envs"]
    (directory / "header.json").write_text(json.dumps(header))
    with pytest.raises(corrupt_error(), match="header.json.*envs"):
        ReplayBuffer(directory, **SETTINGS)


@pytest.mark.parametrize("name", ["observations", "actions", "frame_index", "episode_start_index"])
def test_flipped_bytes_inside_committed_data_fail_the_checksum(tmp_path, name):
    directory = written(tmp_path, commit_every=7)
    buf = ReplayBuffer(directory, **SETTINGS)  # a clean reopen verifies
    assert len(buf) > 0
    offset = buf._arrays[name].offset
    nbytes = buf._arrays[name].nbytes
    buf.close(commit=False)
    path = directory / f"{name}.npy"
    with open(path, "r+b") as f:
        f.seek(offset + nbytes // 3)
        byte = f.read(1)
        f.seek(offset + nbytes // 3)
        f.write(bytes([byte[0] ^ 0x10]))
    with pytest.raises(corrupt_error(), match=f"{name}.npy") as info:
        ReplayBuffer(directory, **SETTINGS)
    assert_names_fresh_replay(info.value)


def test_checksums_of_incremental_commits_equal_a_full_recompute(tmp_path):
    directory = tmp_path / "buf"
    buf = ReplayBuffer(directory, **SETTINGS)
    writer = ScriptedWriter(buf)
    rnd = random.Random(0)
    for _ in range(40):
        for _ in range(rnd.randint(1, 9)):
            writer.step()
        incremental = buf.commit()["checksums"]
        assert incremental == buf._full_checksums()
    buf.close()


def test_a_crash_after_uncommitted_overwrites_reopens_without_a_false_alarm(tmp_path):
    directory = written(tmp_path, commit_every=5)
    buf = ReplayBuffer(directory, **SETTINGS)
    writer = ScriptedWriter.resume(buf)
    for _ in range(9):
        writer.step()  # overwrites committed slots, then "crashes": no commit
    buf.close(commit=False)
    buf = ReplayBuffer(directory, **SETTINGS)
    assert audit(buf) == len(buf) > 0


def test_discard_moves_a_damaged_buffer_aside_and_a_fresh_one_starts(tmp_path):
    directory = written(tmp_path)
    truncate_half(directory / "flags.npy")
    moved = ReplayBuffer.discard(directory)
    assert moved.is_dir() and (moved / "flags.npy").is_file() and (moved / "header.json").is_file()
    assert not directory.exists()
    buf = ReplayBuffer(directory, **SETTINGS)
    assert len(buf) == 0 and buf.transitions_added == 0
    buf.close()
    assert ReplayBuffer.discard(directory) != moved  # a second discard keeps the first


@pytest.mark.parametrize("field,value,key,on_disk", [
    ("n_envs", 3, "train.n_envs", "2"),
    ("capacity", 240, "replay.buffer_size", "120"),
])
def test_a_changed_setting_names_its_config_key_and_both_values(tmp_path, field, value, key, on_disk):
    directory = written(tmp_path)
    with pytest.raises(ReplayMismatchError) as info:
        ReplayBuffer(directory, **{**SETTINGS, field: value})
    message = str(info.value)
    assert message.startswith(f"{key}: the replay")
    assert f"written with {on_disk}, the config now says {value}" in message
    assert info.value.key == key
    assert_names_fresh_replay(info.value)


def test_the_free_space_check_counts_the_checkpoints_the_run_will_write(tmp_path):
    free = shutil.disk_usage(tmp_path).free
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        buf = ReplayBuffer(tmp_path / "buf", **SETTINGS, extra_bytes=2 * free)
    buf.close()
    from dodgerl.replay import DiskSpaceWarning

    hits = [w for w in caught if issubclass(w.category, DiskSpaceWarning)]
    assert len(hits) == 1
    assert "checkpoints" in str(hits[0].message) and "free" in str(hits[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DiskSpaceWarning)
        ReplayBuffer(tmp_path / "other", **SETTINGS, extra_bytes=1 << 20).close()


def _recording(buf, rnd):
    """Make ``buf``'s frame gathers sleep at random (thread timing) and record its draws."""
    gather = buf._gather
    draws = []
    draw = buf._draw

    def slow_gather(*args):
        time.sleep(rnd.uniform(0.0, 0.004))
        return gather(*args)

    def recorded_draw(batch_size):
        out = draw(batch_size)
        draws.append((out[0].copy(), out[1].copy()))
        return out

    buf._gather = slow_gather
    buf._draw = recorded_draw
    return draws


def _run_sampler(tmp_path, name, seed):
    from dodgerl.replay import DeviceSampler

    buf = ReplayBuffer(tmp_path / name, **{**SETTINGS, "seed": 3})
    writer = ScriptedWriter(buf)
    for _ in range(10):
        writer.step()
    draws = _recording(buf, random.Random(seed))
    batches = []
    with DeviceSampler(buf, batch_size=16, steps_per_call=2, prefetch=3, workers=4) as sampler:
        for step in range(40):
            writer.step()
            if step % 2 == 0:
                time.sleep(random.Random(seed + step).uniform(0.0, 0.003))
                batches.append({k: np.asarray(v) for k, v in next(sampler).items()})
    buf.close()
    return draws, batches


def test_same_seed_samplers_draw_the_same_batches_whatever_the_thread_timing(tmp_path):
    draws_a, batches_a = _run_sampler(tmp_path, "a", seed=1)
    draws_b, batches_b = _run_sampler(tmp_path, "b", seed=2)
    assert len(batches_a) == len(batches_b) == 20
    n = len(batches_a) * 1  # the draws of the batches returned (later ones may be prefetched)
    assert len(draws_a) >= n and len(draws_b) >= n
    for (ea, fa), (eb, fb) in zip(draws_a[:n], draws_b[:n]):
        np.testing.assert_array_equal(ea, eb)
        np.testing.assert_array_equal(fa, fb)
    for a, b in zip(batches_a, batches_b):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_the_sampler_draws_in_the_callers_thread(tmp_path):
    from dodgerl.replay import DeviceSampler

    buf = ReplayBuffer(tmp_path / "buf", **SETTINGS)
    writer = ScriptedWriter(buf)
    for _ in range(10):
        writer.step()
    threads = []
    draw = buf._draw

    def recorded_draw(batch_size):
        threads.append(threading.current_thread())
        return draw(batch_size)

    buf._draw = recorded_draw
    with DeviceSampler(buf, batch_size=8, workers=3) as sampler:
        for _ in range(5):
            next(sampler)
            writer.step()
    assert threads and set(threads) == {threading.main_thread()}
    buf.close()


@pytest.fixture
def small_chunks(monkeypatch):
    """Checksum chunks of a few slots, so that SETTINGS' small frames fill many of them."""
    from dodgerl.replay import checksums

    monkeypatch.setattr(checksums, "_CHUNK_BYTES", 3 * 108)  # 3 slots of 6x6x3 uint8 frames
    monkeypatch.setattr(checksums, "_SMALL_CHUNK_SLOTS", 4)


def test_a_chunk_rewritten_after_it_was_hashed_ahead_is_hashed_again(tmp_path, small_chunks):
    buf = ReplayBuffer(tmp_path / "buf", **SETTINGS, writeback_s=None)
    writer = ScriptedWriter(buf)
    for _ in range(40):
        writer.step()
    assert buf._checksums.hash_ahead(threading.Event()) > 0  # what a background pass does
    assert buf.commit()["checksums"] == buf._full_checksums()
    assert buf._checksums.hashed_ahead > 0
    buf._checksums.hash_ahead(threading.Event())
    for _ in range(45):
        writer.step()  # laps the ring: every chunk hashed ahead is written again
    assert buf.commit()["checksums"] == buf._full_checksums()
    buf.close()
    ReplayBuffer(tmp_path / "buf", **SETTINGS).close()  # and verifies on reopen


def test_checksums_hashed_in_the_background_while_adding_equal_a_full_recompute(tmp_path, small_chunks):
    buf = ReplayBuffer(tmp_path / "buf", **SETTINGS, writeback_s=0.0005)  # passes every 0.5 ms
    writer = ScriptedWriter(buf)
    rnd = random.Random(1)
    for _ in range(60):
        for _ in range(rnd.randint(1, 12)):
            writer.step()
            time.sleep(rnd.choice([0, 0, 0.001]))
        assert buf.commit()["checksums"] == buf._full_checksums()
    assert buf._checksums.hashed_ahead > 0 and buf._hasher.kept > 0
    buf.close()
    buf = ReplayBuffer(tmp_path / "buf", **SETTINGS)
    assert audit(buf) == len(buf) > 0
    buf.close()


def test_without_writeback_no_thread_hashes_and_commit_computes_every_checksum(tmp_path, small_chunks):
    buf = ReplayBuffer(tmp_path / "buf", **SETTINGS, writeback_s=None)
    writer = ScriptedWriter(buf)
    for _ in range(30):
        writer.step()
    time.sleep(0.05)
    assert buf.commit()["checksums"] == buf._full_checksums()
    assert buf._hasher is None and buf._checksums.hashed_ahead == 0
    assert not any(t.name.startswith("replay-checksums") for t in threading.enumerate())
    buf.close()
