"""DeviceSampler: prefetched (K, B, ...) device batches, correct while the main thread keeps adding."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from dodgerl.replay import DeviceSampler, ReplayBuffer
from tests.test_replay_helpers import ScriptedWriter, decode_frame, encode_frame, split_stack


def make(tmp_path, **kw):
    args = dict(capacity=40, observation_shape=(4, 4, 3), observation_dtype=np.uint8,
                action_dim=3, n_envs=2, frame_stack=2, seed=0)
    args.update(kw)
    return ReplayBuffer(tmp_path / "buf", **args)


def flat(batch):
    return {k: np.asarray(v).reshape(-1, *v.shape[2:]) for k, v in batch.items()}


def test_batches_have_a_leading_steps_axis_and_live_on_the_device(tmp_path):
    buf = make(tmp_path)
    writer = ScriptedWriter(buf)
    for _ in range(30):
        writer.step()
    with DeviceSampler(buf, batch_size=16, steps_per_call=4, prefetch=2) as sampler:
        batch = next(sampler)
    assert set(batch) == {"observations", "actions", "rewards", "next_observations", "terminated"}
    assert all(isinstance(v, jax.Array) for v in batch.values())
    assert batch["observations"].shape == (4, 16, 4, 4, 6)
    assert batch["observations"].dtype == np.uint8
    assert batch["actions"].shape == (4, 16, 3) and batch["rewards"].shape == (4, 16)
    assert batch["terminated"].dtype == np.float32
    writer.check_sample(flat(batch), k=2)
    assert not any(t.is_alive() for t in sampler._threads)


@pytest.mark.parametrize("workers", [1, 3])
def test_sampling_while_the_main_thread_adds_never_returns_a_torn_transition(tmp_path, workers):
    buf = make(tmp_path, capacity=16)  # 8 slots per env: the writer laps constantly
    writer = ScriptedWriter(buf)
    for _ in range(5):
        writer.step()
    C = 3
    with DeviceSampler(buf, batch_size=32, steps_per_call=2, prefetch=2, workers=workers) as sampler:
        for step in range(300):
            writer.step()
            if step % 3:
                continue  # the sampler keeps sampling in the background while we add
            batch = flat(next(sampler))
            for i in range(64):
                obs = split_stack(batch["observations"][i], 2, C)
                nxt = split_stack(batch["next_observations"][i], 2, C)
                a, e = decode_frame(obs[1])
                start = int(batch["actions"][i][2])
                assert decode_frame(obs[0])[0] in {a - 1, a} and decode_frame(obs[0])[0] >= start
                assert [decode_frame(f) for f in nxt] == [decode_frame(obs[1]), (a + 1, e)]
                for f in obs + nxt:  # every pixel of every frame belongs to the decoded frame
                    np.testing.assert_array_equal(f, encode_frame(e, decode_frame(f)[0], (4, 4, 3),
                                                                  np.uint8))
                np.testing.assert_array_equal(batch["actions"][i][:2], [a, e])


def test_sampler_waits_for_the_first_transition_and_close_stops_it(tmp_path):
    buf = make(tmp_path)
    sampler = DeviceSampler(buf, batch_size=8, steps_per_call=1)
    writer = ScriptedWriter(buf)
    writer.step()
    batch = next(sampler)
    assert batch["observations"].shape == (1, 8, 4, 4, 6)
    sampler.close()
    assert not any(t.is_alive() for t in sampler._threads)


def test_sample_redraws_transitions_the_writer_overwrote_while_they_were_copied(tmp_path):
    buf = make(tmp_path, capacity=16, frame_stack=2)
    writer = ScriptedWriter(buf)
    for _ in range(10):
        writer.step()
    gather = buf._gather
    calls = []

    def gather_while_writer_laps(*args):
        if not calls:  # the sampler chose its indices; the writer now laps the ring under it
            for _ in range(6):
                writer.step()
        calls.append(1)
        return gather(*args)

    buf._gather = gather_while_writer_laps
    batch = buf.sample(256)
    assert len(calls) >= 2  # some rows were drawn again
    writer.check_sample(batch, k=2)  # and every row is a transition of the buffer as it is now
