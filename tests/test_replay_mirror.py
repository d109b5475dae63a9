"""DeviceMirror: the device copy of the frames stays identical to the buffer, batches gathered on
the device equal ``ReplayBuffer.sample``, and an update over mirrored batches equals ``update``."""

from __future__ import annotations

import gymnasium
import jax
import numpy as np
import pytest

from dodgerl.agents import sac
from dodgerl.replay import DeviceMirror, ReplayBuffer, gather_batch
from dodgerl.replay import mirror as mirror_module
from tests.test_replay_helpers import ScriptedWriter


def make(tmp_path, name="buf", **kw):
    args = dict(capacity=60, observation_shape=(6, 5, 3), observation_dtype=np.uint8,
                action_dim=2, n_envs=3, frame_stack=1, seed=0)
    args.update(kw)
    return ReplayBuffer(tmp_path / name, **args)


def device_batch(mirror, batch_size):
    idx = mirror.sample_indices(batch_size, steps=1)
    one = jax.tree.map(lambda x: x[0], idx)
    return jax.tree.map(np.asarray, jax.jit(gather_batch)(mirror.frames, one))


def host_frames(buf):
    return np.asarray(buf._arrays["observations"])


@pytest.mark.parametrize("k,shape,dtype,n_step", [(1, (6, 5, 3), np.uint8, 1),
                                                  (3, (6, 5, 3), np.uint8, 1),
                                                  (1, (7,), np.float32, 1),
                                                  (3, (6, 5, 3), np.uint8, 3),
                                                  (1, (7,), np.float32, 4)])
def test_mirror_tracks_buffer_and_gathers_what_sample_returns(tmp_path, k, shape, dtype, n_step):
    buf = make(tmp_path, frame_stack=k, observation_shape=shape, observation_dtype=dtype,
               n_step=n_step)
    writer = ScriptedWriter(buf, lengths=lambda e, j: 2 + (e + 5 * j) % 9)
    mirror = DeviceMirror(buf)
    checked = 0
    for step in range(160):  # 20 slots per env: wraps ~8 times
        writer.step()
        if step % 7 == 6:
            assert mirror.sync() > 0
            # The device copy equals the on-disk frames, slot for slot (written slots only).
            written = np.asarray(buf._arrays["frame_index"]) >= 0
            np.testing.assert_array_equal(np.asarray(mirror.frames)[written],
                                          host_frames(buf)[written])
            state = buf.rng_state
            expected = buf.sample(48)
            buf.rng_state = state  # same draws for the mirror
            got = device_batch(mirror, 48)
            assert set(got) == set(expected)
            for name in expected:
                np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
            writer.check_sample(got, k=k)  # and it means what it should
            checked += 1
    assert checked == 22
    mirror.close()


def test_mirror_of_a_reopened_buffer_uploads_what_is_on_disk(tmp_path):
    buf = make(tmp_path, frame_stack=2)
    writer = ScriptedWriter(buf)
    for _ in range(45):
        writer.step()
    buf.close()
    buf = make(tmp_path, frame_stack=2)
    mirror = DeviceMirror(buf, upload_chunk=8)  # several chunks per env
    assert mirror.sync() == 0  # the upload covered everything; nothing pending
    written = np.asarray(buf._arrays["frame_index"]) >= 0
    assert written.sum() == 60
    np.testing.assert_array_equal(np.asarray(mirror.frames)[written], host_frames(buf)[written])
    state = buf.rng_state
    expected = buf.sample(32)
    buf.rng_state = state
    got = device_batch(mirror, 32)
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)


def test_a_stacked_mirror_of_reopened_buffers_uploads_each_and_then_follows_them(tmp_path):
    """StackedMirror: seed s's slice is buffer s, after the full upload of what two reopened
    buffers (of different lengths) hold, in pieces smaller than one buffer, and after syncs."""
    from dodgerl.replay.mirror import StackedMirror

    bufs = []
    for s, steps in enumerate((45, 12)):
        buf = make(tmp_path, name=f"buf{s}", seed=s)
        writer = ScriptedWriter(buf)
        for _ in range(steps):
            writer.step()
        buf.close()
        bufs.append(make(tmp_path, name=f"buf{s}", seed=s))
    mirror = StackedMirror(bufs, upload_chunk=8)
    assert mirror.take() == []  # the upload covered everything; nothing pending

    def check():
        frames = np.asarray(mirror.frames)
        for s, buf in enumerate(bufs):
            written = np.asarray(buf._arrays["frame_index"]) >= 0
            assert written.any()
            np.testing.assert_array_equal(frames[s][written], host_frames(buf)[written])

    check()
    writer = ScriptedWriter(bufs[1])
    for _ in range(5):
        writer.step()
        mirror.upload(mirror.take())
    check()


def test_mirror_that_does_not_fit_is_refused_with_sizes(tmp_path, monkeypatch):
    buf = make(tmp_path)
    monkeypatch.setattr(mirror_module, "device_memory_bytes", lambda device: 10_000)
    with pytest.raises(MemoryError, match=r"needs 5,400 bytes.*10,000 bytes.*device_mirror: off"):
        DeviceMirror(buf, max_fraction=0.5)
    buf.add(np.zeros((3, 6, 5, 3), np.uint8), np.zeros((3, 2), np.float32), np.zeros(3, np.float32),
            np.zeros((3, 6, 5, 3), np.uint8), np.zeros(3), np.zeros(3))  # the buffer still works


def test_update_from_mirror_equals_update_on_the_host_batch(tmp_path):
    k, b = 3, 8
    buf = make(tmp_path, frame_stack=2, observation_shape=(36, 36, 3))
    writer = ScriptedWriter(buf)
    for _ in range(40):
        writer.step()
    mirror = DeviceMirror(buf)
    space = gymnasium.spaces.Box(0, 255, (36, 36, 6), np.uint8)
    actions = gymnasium.spaces.Box(-1.0, 1.0, (2,), np.float32)
    cfg = sac.SACConfig(net_arch=(16, 16), encoder_features=16, batch_size=b, actor_lr=1e-2,
                        critic_lr=1e-2, augmentation=True)
    key = jax.random.key(7)

    state = buf.rng_state
    host = buf.sample(k * b)
    buf.rng_state = state
    indices = mirror.sample_indices(b, steps=k)
    batch = sac.Batch(**{n: v.reshape(k, b, *v.shape[1:]) for n, v in host.items()})

    plain, m1 = sac.create(jax.random.key(0), space, actions, cfg).update(batch, key)
    fused, m2 = sac.create(jax.random.key(0), space, actions, cfg).update_from(
        mirror.frames, indices, key, gather_batch)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6),
                 jax.tree.map(np.asarray, plain), jax.tree.map(np.asarray, fused))
    for name in m1:
        np.testing.assert_allclose(m1[name], m2[name], rtol=1e-5, atol=1e-6)
    assert int(fused.critic.step) == k


def test_update_from_compiles_once(tmp_path):
    """The first call (fresh agent) and later calls (agents returned by the update) share one
    program: a second compilation would stall a GPU run for ~20 s inside its timed window."""
    buf = make(tmp_path, observation_shape=(5,), observation_dtype=np.float32)
    writer = ScriptedWriter(buf)
    for _ in range(20):
        writer.step()
    mirror = DeviceMirror(buf)
    space = gymnasium.spaces.Box(-np.inf, np.inf, (5,), np.float32)
    actions = gymnasium.spaces.Box(-1.0, 1.0, (2,), np.float32)
    agent = sac.create(jax.random.key(0), space, actions,
                       sac.SACConfig(net_arch=(8,), batch_size=4, gamma=0.95))  # a fresh program
    before = sac._update_from_jit._cache_size()
    for i in range(3):
        agent, metrics = agent.update_from(mirror.frames, mirror.sample_indices(4, 2),
                                           jax.random.key(i), gather_batch)
        writer.step()
        mirror.sync()
    assert np.isfinite(float(metrics["critic_loss"]))
    assert sac._update_from_jit._cache_size() == before + 1
