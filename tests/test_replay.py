"""ReplayBuffer behaviour at its edges: wraparound, episode ends, frame stacks, the write cursor,
interleaved envs, reopen and reproducible sampling."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dodgerl.replay import ReplayBuffer
from tests.test_replay_helpers import ScriptedWriter, decode_frame, encode_frame


def make(tmp_path, name="buf", **kw):
    args = dict(capacity=60, observation_shape=(6, 5, 3), observation_dtype=np.uint8,
                action_dim=2, n_envs=3, frame_stack=1, seed=0)
    args.update(kw)
    return ReplayBuffer(tmp_path / name, **args)


def test_sampled_transitions_exactly_match_what_was_added_across_wraparound(tmp_path):
    buf = make(tmp_path, capacity=60, n_envs=3)  # 20 slots per env, wraps ~10 times
    writer = ScriptedWriter(buf)
    seen = set()
    for step in range(200):
        writer.step()
        assert len(buf) == len(writer.expected_transitions())
        if step % 3 == 0:
            seen |= writer.check_sample(buf.sample(64), k=1)
    assert min(buf.frames_written) > 5 * buf.slots_per_env
    assert len({e for e, _ in seen}) == 3
    # Uniform over the valid set: a large batch reaches every stored transition.
    assert writer.check_sample(buf.sample(4000), k=1) == writer.expected_transitions()


@pytest.mark.parametrize("dtype,shape", [(np.uint8, (4, 4, 3)), (np.float32, (9,))])
def test_frame_stacks_are_exact_for_images_and_vectors(tmp_path, dtype, shape):
    k = 4
    buf = make(tmp_path, capacity=40, n_envs=2, frame_stack=k, observation_dtype=dtype,
               observation_shape=shape)
    writer = ScriptedWriter(buf, lengths=lambda e, j: 2 + (e + 3 * j) % 11)
    for step in range(150):
        writer.step()
        if step % 5 == 4:
            batch = buf.sample(128)
            assert batch["observations"].shape == (128, *shape[:-1], shape[-1] * k)
            assert batch["observations"].dtype == dtype
            writer.check_sample(batch, k=k)


def test_stack_crossing_an_episode_start_repeats_the_first_frame(tmp_path):
    buf = make(tmp_path, capacity=50, n_envs=1, frame_stack=3, observation_shape=(3, 2, 1))
    writer = ScriptedWriter(buf, lengths=lambda e, j: 4)
    for _ in range(6):
        writer.step()  # episode 0: frames 0..4 (4 final), episode 1: frames 5..7 so far
    batch = buf.sample(500)
    stacks = {tuple(decode_frame(batch["observations"][i][..., c:c + 1])[0] for c in range(3))
              for i in range(500)}
    # Frame 5 starts episode 1: its stack repeats it and never reaches frames 0..4.
    assert stacks == {(0, 0, 0), (0, 0, 1), (0, 1, 2), (1, 2, 3), (5, 5, 5), (5, 5, 6)}


def test_stack_clamps_at_oldest_present_frame_when_episode_start_was_overwritten(tmp_path):
    k = 4
    buf = make(tmp_path, capacity=10, n_envs=1, frame_stack=k, observation_shape=(5, 1, 1))
    writer = ScriptedWriter(buf, lengths=lambda e, j: 1000)  # one long episode
    for _ in range(25):
        writer.step()  # 26 frames; only 16..25 are present
    batch = buf.sample(1000)
    firsts = set()
    for i in range(1000):
        frames = [decode_frame(batch["observations"][i][..., c:c + 1])[0] for c in range(k)]
        assert min(frames) >= 16, frames  # never the write cursor's slot, never overwritten
        firsts.add(frames[0])
    assert 16 in firsts
    writer.check_sample(batch, k=k)


def test_truncated_final_observation_is_kept_and_returned_as_next_observation(tmp_path):
    buf = make(tmp_path, capacity=10, n_envs=1, observation_shape=(3,),
               observation_dtype=np.float32)
    first, final = np.full((1, 3), 1.0, np.float32), np.full((1, 3), 2.0, np.float32)
    buf.add(first, np.zeros((1, 2)), [1.0], final, [False], [True])
    assert len(buf) == 1
    batch = buf.sample(4)
    np.testing.assert_array_equal(batch["next_observations"], np.repeat(final, 4, axis=0))
    np.testing.assert_array_equal(batch["terminated"], np.zeros(4, np.float32))
    # The next episode starts from its own reset observation; the final frame starts nothing.
    reset = np.full((1, 3), 3.0, np.float32)
    buf.add(reset, np.zeros((1, 2)), [1.0], np.full((1, 3), 4.0, np.float32), [True], [False])
    assert len(buf) == 2
    batch = buf.sample(200)
    assert set(batch["observations"][:, 0]) == {1.0, 3.0}
    assert set(batch["next_observations"][:, 0]) == {2.0, 4.0}
    assert set(batch["terminated"][batch["observations"][:, 0] == 3.0]) == {1.0}


def test_samples_near_the_cursor_never_use_the_slot_being_written(tmp_path):
    buf = make(tmp_path, capacity=8, n_envs=2, frame_stack=2, observation_shape=(2, 1, 3))
    writer = ScriptedWriter(buf, lengths=lambda e, j: 3 + e)
    for _ in range(60):
        writer.step()
        batch = buf.sample(64)
        writer.check_sample(batch, k=2)
        w = buf.frames_written
        for i in range(64):
            f, e = decode_frame(batch["next_observations"][i][..., 3:])
            assert f <= w[e] - 1  # the next frame is written
            f0, _ = decode_frame(batch["observations"][i][..., :3])
            assert f0 >= w[e] - buf.slots_per_env  # nothing older than the ring holds


def test_interleaved_envs_each_next_observation_is_that_envs_next(tmp_path):
    buf = make(tmp_path, capacity=90, n_envs=3)
    writer = ScriptedWriter(buf, lengths=lambda e, j: [2, 5, 9][e])  # envs out of phase
    for _ in range(70):
        writer.step()
    batch = buf.sample(2000)
    for i in range(2000):
        a, e = decode_frame(batch["observations"][i])
        b, e2 = decode_frame(batch["next_observations"][i])
        assert (e2, b) == (e, a + 1)
    assert writer.check_sample(batch, k=1) == writer.expected_transitions()


@pytest.mark.parametrize("n_step", [1, 3])
def test_reopen_continues_in_place_and_cuts_the_open_episode(tmp_path, n_step):
    buf = make(tmp_path, capacity=60, n_envs=3, frame_stack=2, n_step=n_step)
    writer = ScriptedWriter(buf, lengths=lambda e, j: 7)
    for _ in range(12):
        writer.step()
    buf.close()
    buf = make(tmp_path, capacity=60, n_envs=3, frame_stack=2, n_step=n_step)
    writer.buf = buf
    writer.reopened()
    assert len(buf) == len(writer.expected_transitions())
    writer.check_sample(buf.sample(500), k=2)
    for _ in range(30):
        writer.step()  # first add after reopen writes its observation: a new episode
    writer.check_sample(buf.sample(1000), k=2)
    assert len(buf) == len(writer.expected_transitions())


def test_uncommitted_adds_are_forgotten_on_reopen(tmp_path):
    buf = make(tmp_path, capacity=60, n_envs=3)
    writer = ScriptedWriter(buf)
    for _ in range(5):
        writer.step()
    buf.commit()
    committed = len(buf)
    for _ in range(5):
        writer.step()  # never committed; the process "dies" without close
    del buf
    buf = make(tmp_path, capacity=60, n_envs=3)
    assert len(buf) < committed + 1 and buf.transitions_added == 15
    for i in range(300):
        a, e = decode_frame(buf.sample(1)["observations"][0])
        assert a + 1 < buf.frames_written[e]


def test_sampling_is_reproducible_across_commit_and_reopen(tmp_path):
    buf = make(tmp_path, capacity=60, n_envs=3, seed=7)
    writer = ScriptedWriter(buf, lengths=lambda e, j: 5)
    for _ in range(10):
        writer.step()  # every episode has ended: reopen cuts nothing, the valid set is unchanged
    buf.sample(10)
    buf.commit()
    header = json.loads((tmp_path / "buf" / "header.json").read_text())
    assert header["rng_state"] == buf.rng_state
    expected = [buf.sample(16) for _ in range(3)]
    reopened = make(tmp_path, capacity=60, n_envs=3, seed=999)  # state comes from disk
    got = [reopened.sample(16) for _ in range(3)]
    for x, y in zip(expected, got):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    # Same seed, same adds: the same batches.
    twins = [make(tmp_path, name, capacity=60, n_envs=3, seed=3) for name in ("a", "b")]
    for twin in twins:
        w = ScriptedWriter(twin)
        for _ in range(20):
            w.step()
    for _ in range(3):
        a, b = twins[0].sample(32), twins[1].sample(32)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_add_rejects_wrong_shapes_and_unsafe_dtypes(tmp_path):
    buf = make(tmp_path, n_envs=2)
    obs = np.zeros((2, 6, 5, 3), np.uint8)
    good = dict(observations=obs, actions=np.zeros((2, 2), np.float32), rewards=np.zeros(2),
                next_observations=obs, terminated=np.zeros(2, bool), truncated=np.zeros(2, bool))
    buf.add(**good)
    with pytest.raises(ValueError, match="observations"):
        buf.add(**{**good, "observations": obs[:1]})
    with pytest.raises(ValueError, match="actions"):
        buf.add(**{**good, "actions": np.zeros((2, 3), np.float32)})
    with pytest.raises(TypeError, match="next_observations"):
        buf.add(**{**good, "next_observations": obs.astype(np.float32)})
    with pytest.raises(ValueError, match="no complete transition"):
        make(tmp_path, "empty").sample(1)


def test_encoding_round_trips():
    for dtype, shape in [(np.uint8, (4, 4, 3)), (np.float32, (7,))]:
        assert decode_frame(encode_frame(2, 70_001, shape, dtype)) == (70_001, 2)


@pytest.mark.parametrize("k,capacity", [(1, 400), (3, 400), (2, 40)])
def test_n_step_sums_rewards_within_the_episode_and_bootstraps_m_steps_later(tmp_path, k, capacity):
    n, gamma = 3, 0.9
    buf = make(tmp_path, capacity=capacity, n_envs=2, frame_stack=k, n_step=n, gamma=gamma,
               observation_shape=(3, 2, 1))
    writer = ScriptedWriter(buf, lengths=lambda e, j: 1 + (2 * e + 3 * j) % 6)  # 1..6 steps
    spans = set()
    for step in range(120):  # capacity 40 wraps several times; 400 never does
        writer.step()
        if step % 10 != 9:
            continue
        batch = buf.sample(256)
        assert set(batch) == {"observations", "actions", "rewards", "next_observations",
                              "terminated", "discounts"}
        for i in range(256):
            a, e = decode_frame(batch["observations"][i][..., (k - 1):k])
            ends = [f for f in writer.final[e] if f > a]
            left = (min(ends) if ends else writer.frames[e] - 1) - a  # steps to episode end/cursor
            m = min(n, left)
            spans.add(m)
            np.testing.assert_allclose(batch["rewards"][i],
                                       sum(gamma**j * (a + j) / 4 for j in range(m)), rtol=1e-6)
            assert batch["terminated"][i] == float(writer.terminated_at[e][a + m - 1])
            np.testing.assert_allclose(batch["discounts"][i], gamma**m, rtol=1e-6)
            start = writer.episode_start[e][a]
            lowest_kept = max(start, writer.frames[e] - buf.slots_per_env)
            for c in range(k):  # next stack: frames a+m-k+1 .. a+m, clamped into the episode
                expected = max(a + m - (k - 1) + c, lowest_kept)
                assert decode_frame(batch["next_observations"][i][..., c:c + 1]) == (expected, e)
            assert tuple(batch["actions"][i]) == (a, e)
    assert spans == {1, 2, 3}  # full spans and ones cut by episode ends / the write cursor


def test_n_step_one_is_the_one_step_sample(tmp_path):
    plain = make(tmp_path, "plain", frame_stack=2)
    one = make(tmp_path, "one", frame_stack=2, n_step=1, gamma=0.5)
    for buf in (plain, one):
        writer = ScriptedWriter(buf)
        for _ in range(50):
            writer.step()
    a, b = plain.sample(300), one.sample(300)
    assert set(a) == set(b) and "discounts" not in b
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_n_step_must_be_a_positive_integer(tmp_path, bad):
    with pytest.raises(ValueError, match="n_step"):
        make(tmp_path, n_step=bad)


@pytest.mark.parametrize("bad", [1.5, -0.1, True, "0.9", None])
def test_n_step_gamma_must_be_a_number_in_unit_interval(tmp_path, bad):
    with pytest.raises(ValueError, match="gamma"):
        make(tmp_path, n_step=3, gamma=bad)


def _draw_by_full_scan(buf, batch_size):
    """The sampling rule written out in full, over every slot's flags scanned afresh: frames
    drawn uniformly from each env's stored window [max(oldest, written - S, 0), written - 2],
    those that start no transition drawn again (8 rounds; what is left is picked among the
    sampleable slots listed row-major), all with a copy of the buffer's Generator. ``add`` keeps
    the sampleable set incrementally; it must draw exactly these."""
    ok = buf._scan_sampleable()
    S = buf.slots_per_env
    rng = np.random.Generator(np.random.PCG64())
    rng.bit_generator.state = buf.rng_state
    w = np.asarray(buf.frames_written, np.int64)
    lo = np.maximum(np.maximum(buf._oldest, w - S), 0)
    windows = [(e, f) for e in range(buf.n_envs) for f in range(lo[e], w[e] - 1)]
    env, slot = np.zeros(batch_size, np.int64), np.zeros(batch_size, np.int64)
    todo = list(range(batch_size))
    for _ in range(8):
        picks = rng.integers(0, len(windows), size=len(todo))
        left = []
        for i, p in zip(todo, picks):
            e, f = windows[p]
            if ok[e, f % S]:
                env[i], slot[i] = e, f % S
            else:
                left.append(i)
        todo = left
        if not todo:
            break
    else:
        listed_env, listed_slot = np.nonzero(ok)
        pick = rng.integers(0, listed_env.size, size=len(todo))
        env[todo], slot[todo] = listed_env[pick], listed_slot[pick]
    return env, slot, int(ok.sum())


def test_incremental_sampleable_set_draws_what_a_full_scan_of_the_flags_draws(tmp_path):
    buf = make(tmp_path, capacity=60, n_envs=3, frame_stack=2, seed=5)
    writer = ScriptedWriter(buf)  # episodes of 1-9 steps, 20 slots per env: many wraps

    def check(model=True):
        env, slot, count = _draw_by_full_scan(buf, 50)
        assert len(buf) == count > 0
        if model:
            assert count == len(writer.expected_transitions())
        np.testing.assert_array_equal(buf._ok, buf._scan_sampleable())
        got = buf.sample_indices(50)
        np.testing.assert_array_equal(got["env"], env)
        np.testing.assert_array_equal(got["obs_slots"][:, -1], slot)

    for step in range(120):
        writer.step()
        if step == 115:
            buf.commit()
        if step % 7 == 0 or step > 110:
            check()
    del buf  # the last 4 adds were never committed: reopen drops the slots they overwrote
    buf = make(tmp_path, capacity=60, n_envs=3, frame_stack=2, seed=5)
    writer = ScriptedWriter.resume(buf)
    check(model=False)  # the resumed writer does not know the episodes before the reopen
    for step in range(60):
        writer.step()
        check(model=False)


def test_draws_are_uniform_over_the_sampleable_transitions_however_many_frames_end_episodes(tmp_path):
    """Rejection of episode-final frames keeps the draw uniform over the sampleable set: with
    episodes of 1 step (every other frame final, most draws rejected at least once) and of 1-9
    steps, each transition's count over many draws stays within 5 sigma of the expected one."""
    for name, lengths in (("short", lambda e, j: 1), ("mixed", lambda e, j: 1 + (3 * e + 5 * j) % 9)):
        buf = make(tmp_path, name=name, capacity=60, n_envs=3, seed=11)
        writer = ScriptedWriter(buf, lengths=lengths)
        for _ in range(45):
            writer.step()
        expected = writer.expected_transitions()
        draws = 40_000
        env, frames = [], []
        for _ in range(draws // 500):
            got = buf.sample(500)
            env.append(got["actions"][:, 1].astype(int))
            frames.append(got["actions"][:, 0].astype(int))
        pairs = np.stack([np.concatenate(env), np.concatenate(frames)], 1)
        keys, counts = np.unique(pairs, axis=0, return_counts=True)
        assert {tuple(k) for k in keys.tolist()} == expected
        p = 1.0 / len(expected)
        sigma = np.sqrt(draws * p * (1 - p))
        assert np.abs(counts - draws * p).max() < 5 * sigma, (name, counts.min(), counts.max())


def _wait_for(condition, seconds=10.0):
    import time

    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def test_background_writeback_writes_only_after_adds_and_declares_nothing(tmp_path):
    """The writeback thread fsyncs the files when something was added since its last pass, never
    when idle; what it wrote is not declared (an uncommitted add is still forgotten on reopen);
    close() stops it."""
    import threading
    import time

    buf = make(tmp_path, capacity=60, n_envs=3, writeback_s=0.01)
    writer = ScriptedWriter(buf)
    time.sleep(0.1)
    assert buf.writebacks == 0  # nothing added yet: nothing written back
    for _ in range(5):
        writer.step()
    buf.commit()
    committed = len(buf)
    assert _wait_for(lambda: buf.writebacks >= 1)

    def unchanged_over(seconds):
        before = buf.writebacks
        time.sleep(seconds)
        return buf.writebacks == before

    # Idle buffer: once the pass that saw the last add is done, no more passes (a thread that
    # wrote on every tick would change the count within ten ticks, every time).
    assert _wait_for(lambda: unchanged_over(0.1))
    assert unchanged_over(0.3)
    idle = buf.writebacks
    for _ in range(5):
        writer.step()  # written back below, never committed
    assert _wait_for(lambda: buf.writebacks > idle)
    buf.close(commit=False)
    assert not any(t.name == f"replay-writeback {tmp_path / 'buf'}" and t.is_alive()
                   for t in threading.enumerate())
    buf = make(tmp_path, capacity=60, n_envs=3, writeback_s=None)
    assert len(buf) < committed + 1 and buf.transitions_added == 15 and buf.writebacks == 0
    buf.close()


@pytest.mark.parametrize("bad", [0, -1.0])
def test_writeback_interval_must_be_positive(tmp_path, bad):
    with pytest.raises(ValueError, match="writeback_s"):
        make(tmp_path, writeback_s=bad)


@pytest.mark.parametrize("later_steps", [5, 16], ids=["no_wrap", "wraps_over_the_window"])
def test_rewind_header_brings_the_buffer_back_to_an_earlier_commit(tmp_path, later_steps):
    """A resume from an older checkpoint rewinds the buffer to that checkpoint's commit: what was
    added after it is never sampled, and slots the later adds overwrote leave the window."""
    from dodgerl.replay import ReplayMismatchError, rewind_check, rewind_header

    buf = make(tmp_path, capacity=60, n_envs=3)  # 20 slots per env
    writer = ScriptedWriter(buf, lengths=lambda e, j: 50)
    for _ in range(8):
        writer.step()
    header = buf.commit()
    written, length = buf.frames_written.copy(), len(buf)
    for _ in range(later_steps):
        writer.step()  # the abandoned continuation
    later = buf.commit()
    buf.close()
    assert later["transitions_added"] > header["transitions_added"]
    # Not this buffer's header, or one it has not reached: refused, nothing changed.
    path = tmp_path / "buf" / "header.json"
    before = path.read_text()
    with pytest.raises(ReplayMismatchError, match="capacity"):
        rewind_header(tmp_path / "buf", {**header, "capacity": 61})
    # A buffer behind the header (recreated since?) is left as it is.
    assert rewind_header(tmp_path / "buf", {**later, "transitions_added": 10_000}) < 0
    assert path.read_text() == before

    kept = tmp_path / "aside" / "header.json"
    dropped = 3 * later_steps
    assert rewind_check(tmp_path / "buf", header) == dropped
    assert path.read_text() == before  # the check reads only
    assert rewind_header(tmp_path / "buf", header, keep_as=kept) == dropped
    replaced = json.loads(kept.read_text())  # close() committed once more, adding nothing
    assert (replaced["envs"], replaced["transitions_added"]) == (later["envs"], later["transitions_added"])
    assert rewind_header(tmp_path / "buf", header) == 0  # already there
    buf = make(tmp_path, capacity=60, n_envs=3)
    np.testing.assert_array_equal(buf.frames_written, written)
    assert buf.transitions_added == header["transitions_added"]
    if later_steps == 5:
        assert len(buf) == length
    else:
        assert 0 < len(buf) < length  # the overwritten oldest frames are gone
    batch = buf.sample(500)
    for obs, nxt in zip(batch["observations"], batch["next_observations"]):
        (a, e), (b, f) = decode_frame(obs), decode_frame(nxt)
        assert e == f and b == a + 1 and b < written[e]


def test_rewind_with_nothing_added_only_sets_the_sampling_rng_back(tmp_path):
    """Batches drawn after a commit (sampler threads, before they stop) move the RNG on, and the
    closing commit records it: that is not an abandoned continuation. The rewind drops nothing
    and sets the RNG back to the checkpoint's, so sampling continues as from the checkpoint."""
    from dodgerl.replay import rewind_check, rewind_header

    buf = make(tmp_path, capacity=60, n_envs=3, seed=5)
    writer = ScriptedWriter(buf, lengths=lambda e, j: 4)
    for _ in range(10):
        writer.step()
    header = buf.commit()
    expected = buf.sample(16)
    buf.sample(16)
    buf.close()  # commits the moved RNG
    assert rewind_check(tmp_path / "buf", header) == 0
    assert rewind_header(tmp_path / "buf", header, keep_as=tmp_path / "kept.json") == 0
    assert not (tmp_path / "kept.json").exists()
    reopened = make(tmp_path, capacity=60, n_envs=3, seed=5)
    got = reopened.sample(16)
    for key in expected:
        np.testing.assert_array_equal(expected[key], got[key])
