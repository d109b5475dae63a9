"""A copy of a replay buffer's frames in accelerator memory, so batches never cross PCIe.

The on-disk :class:`~dodgerl.replay.buffer.ReplayBuffer` stays the source of truth (crash
safety, resume); :class:`DeviceMirror` keeps an identical ``(n_envs, slots, *obs_shape)`` array
of its frames on the device. The thread that adds to the buffer calls :meth:`DeviceMirror.sync`
(one padded scatter of the frames written since the last sync, into a donated array: no copy of
the mirror), then :meth:`DeviceMirror.sample_indices`, which draws transitions with the buffer's
own seeded Generator and validity rule and returns only *where* their frames are plus the small
fields (actions, rewards, terminated). Each has a host half (:meth:`~DeviceMirror.take`,
:meth:`~DeviceMirror.draw_indices`: from the thread that adds) and a device half
(:meth:`~DeviceMirror.upload`, ``jax.device_put``) that may be made from another thread, the one
that also makes the updates reading ``frames`` (the training loop's dispatch thread).
:func:`gather_batch` turns those into a ``sac.Batch`` on the device, inside the compiled update
(``SACAgent.update_from``), frame stacks included.

A 100K-transition 256x256x3 buffer is 19.7 GB: it fits an 80 GB GPU next to the agent. The
mirror refuses (with the sizes) to allocate more than ``max_fraction`` of the device's memory.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from dodgerl.replay.buffer import ReplayBuffer, _fmt_bytes


def device_memory_bytes(device: Any) -> int | None:
    """Total memory of ``device`` as the runtime reports it (None where it does not: CPU)."""
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001  (backends without memory stats)
        return None
    if not stats:
        return None
    return int(stats.get("bytes_limit") or 0) or None


def mirror_bytes(buffer: ReplayBuffer) -> int:
    shape = (buffer.n_envs, buffer.slots_per_env, *buffer.observation_shape)
    return int(np.prod(shape, dtype=np.int64)) * buffer.observation_dtype.itemsize


_Chunk = tuple[np.ndarray, np.ndarray, np.ndarray]
"""(env, slot, frame) rows of one upload, padded to a power-of-two bucket (padding rows: slot
out of bounds)."""


@functools.partial(jax.jit, donate_argnums=0)
def _scatter(frames: jax.Array, env: jax.Array, slots: jax.Array, values: jax.Array) -> jax.Array:
    # Padding rows carry slot == slots_per_env (out of bounds): mode="drop" ignores them.
    return frames.at[env, slots].set(values, mode="drop")


def gather_batch(frames: jax.Array, indices: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """The batch ``indices`` (one step, no K axis) describes, read from the mirrored ``frames``.

    Frame stacks ``(B, k)`` of slots become channel-stacked observations ``(B, H, W, k*C)``,
    oldest frame first, exactly as ``ReplayBuffer.sample`` lays them out. Jittable.
    """
    env = indices["env"][:, None]

    def stack(slots: jax.Array) -> jax.Array:
        x = frames[env, slots]  # (B, k, *obs_shape)
        if x.shape[1] == 1:
            return x[:, 0]
        B, k, *shape, C = x.shape
        return jnp.moveaxis(x, 1, -2).reshape(B, *shape, k * C)

    # The slot indices become frames; the small fields (actions, rewards, terminated, and
    # discounts with n-step sampling) pass through as sample_indices gave them.
    small = {k: v for k, v in indices.items() if k not in ("env", "obs_slots", "next_slots")}
    return {"observations": stack(indices["obs_slots"]),
            "next_observations": stack(indices["next_slots"]), **small}


MIN_BUCKET = 8
"""Fewest rows of an upload: smaller ones are padded up to it (few distinct shapes, few compiles)."""


def written_slots(buffer: ReplayBuffer) -> tuple[np.ndarray, np.ndarray]:
    """(env, slot) of every slot ``buffer`` has ever written, env by env: what a resumed
    buffer holds, uploaded in full when its mirror starts."""
    counts = [int(min(n, buffer.slots_per_env)) for n in buffer.frames_written]
    env = np.concatenate([np.full(n, e, np.int32) for e, n in enumerate(counts)])
    slots = np.concatenate([np.arange(n, dtype=np.int32) for n in counts])
    return env, slots


def bucketed(indices: tuple[np.ndarray, ...], slots: np.ndarray,
             read: Callable[[slice], np.ndarray], max_bucket: int, slots_per_env: int
             ) -> list[tuple[np.ndarray, ...]]:
    """Upload chunks of the rows ``(*indices, slots)``: pieces of at most ``max_bucket`` rows,
    each ``(*indices, slots, frames)`` padded to a power-of-two bucket (padding rows: slot
    ``slots_per_env``, out of bounds, which the scatter drops). ``read(part)`` reads the frames
    of the rows ``part`` from the buffers, one piece at a time: host memory stays bounded by
    one piece however much a resumed buffer holds."""
    chunks = []
    for lo in range(0, slots.size, max_bucket):
        part = slice(lo, lo + max_bucket)
        n = slots[part].size
        pad = max(MIN_BUCKET, 1 << (n - 1).bit_length()) - n
        values = read(part)
        chunks.append((*(np.pad(i[part], (0, pad)) for i in indices),
                       np.pad(slots[part], (0, pad), constant_values=slots_per_env),
                       np.pad(values, [(0, pad)] + [(0, 0)] * (values.ndim - 1))))
    return chunks


class DeviceMirror:
    """Frames of ``buffer`` kept on ``device``; see the module docstring.

    Not thread-safe with respect to ``buffer.add``: sync, take and draw from the thread that
    adds; upload (and the updates reading ``frames``) from one thread, in order.
    """

    def __init__(self, buffer: ReplayBuffer, device: Any = None, max_fraction: float = 0.6,
                 upload_chunk: int = 1024) -> None:
        self.buffer = buffer
        self.device = device if device is not None else jax.devices()[0]
        need = mirror_bytes(buffer)
        total = device_memory_bytes(self.device)
        if total is not None and need > max_fraction * total:
            raise MemoryError(
                f"device mirror of the replay buffer needs {_fmt_bytes(need)} "
                f"({buffer.n_envs} x {buffer.slots_per_env} frames of {buffer.observation_shape} "
                f"{buffer.observation_dtype}), more than {max_fraction:.0%} of the "
                f"{_fmt_bytes(total)} of {self.device}; use replay.device_mirror: off")
        self.slots_per_env = buffer.slots_per_env
        self.frames = jnp.zeros((buffer.n_envs, buffer.slots_per_env, *buffer.observation_shape),
                                buffer.observation_dtype, device=self.device)
        self._max_bucket = int(upload_chunk)
        if self._max_bucket < 1 or self._max_bucket & (self._max_bucket - 1):
            raise ValueError(f"upload_chunk must be a power of two, got {upload_chunk}")
        buffer.track_writes(True)
        self._upload_existing()

    def _upload_existing(self) -> None:
        """Copy what the buffer already holds (a resumed run): every slot ever written."""
        self.upload(self._chunks(*written_slots(self.buffer)))
        self.buffer.take_writes()  # already covered by the full upload

    def _chunks(self, env: np.ndarray, slots: np.ndarray) -> list[_Chunk]:
        """The frames of (env, slots), read from the buffer, as upload chunks (``bucketed``)."""
        return bucketed((env,), slots, lambda part: self.buffer.frames_at(env[part], slots[part]),
                        self._max_bucket, self.slots_per_env)

    def take(self) -> list[_Chunk]:
        """The host half of :meth:`sync`: the frames written since the last sync, read from the
        buffer (from the thread that adds to it). Pass them to :meth:`upload`."""
        return self._chunks(*self.buffer.take_writes())

    def upload(self, chunks: list[_Chunk]) -> None:
        """The device half of :meth:`sync`: scatter ``take()``'s frames into the mirror. May run
        on another thread than ``take``, as long as mirror uploads and the updates reading
        ``frames`` are made from one thread, in order (``frames`` is donated)."""
        for env, slots, values in chunks:
            self.frames = _scatter(self.frames, *jax.device_put((env, slots, values), self.device))

    def sync(self) -> int:
        """Copy the frames written since the last sync to the device; returns how many."""
        env, slots = self.buffer.take_writes()
        self.upload(self._chunks(env, slots))
        return int(env.size)

    def draw_indices(self, batch_size: int, steps: int = 1) -> dict[str, np.ndarray]:
        """The host half of :meth:`sample_indices` (numpy, from the thread that adds)."""
        host = self.buffer.sample_indices(batch_size * steps)
        return {k: v.reshape(steps, batch_size, *v.shape[1:]) for k, v in host.items()}

    def sample_indices(self, batch_size: int, steps: int = 1) -> dict[str, jax.Array]:
        """Indices and small fields of ``steps`` batches, with a leading K axis, on the device."""
        return jax.device_put(self.draw_indices(batch_size, steps), self.device)

    def close(self) -> None:
        self.buffer.track_writes(False)
        self.frames = None


@functools.partial(jax.jit, donate_argnums=0)
def _scatter_seeds(frames: jax.Array, seed: jax.Array, env: jax.Array, slots: jax.Array,
                   values: jax.Array) -> jax.Array:
    return frames.at[seed, env, slots].set(values, mode="drop")


class StackedMirror:
    """The frames of N replay buffers of one shape (one buffer per seed of a run group) in one
    ``(N, n_envs, slots, *obs_shape)`` device array, whose seed axis may be sharded over devices
    (``sharding``): what ``sac.update_from_stacked`` gathers each seed's batches from, with
    :func:`gather_batch`. One upload per sync covers every seed. Same threading rules as
    :class:`DeviceMirror`.
    """

    def __init__(self, buffers: list[ReplayBuffer], sharding: Any = None,
                 upload_chunk: int = 1024) -> None:
        self.buffers = list(buffers)
        first = self.buffers[0]
        shape = (first.n_envs, first.slots_per_env, *first.observation_shape)
        for i, b in enumerate(self.buffers):
            if (b.n_envs, b.slots_per_env, *b.observation_shape) != shape or \
                    b.observation_dtype != first.observation_dtype:
                raise ValueError(f"StackedMirror: buffer {i} holds {(b.n_envs, b.slots_per_env, *b.observation_shape)} "
                                 f"{b.observation_dtype} frames, buffer 0 {shape} {first.observation_dtype}")
        self.slots_per_env = first.slots_per_env
        self.device = sharding if sharding is not None else jax.devices()[0]
        self.frames = jnp.zeros((len(self.buffers), *shape), first.observation_dtype,
                                device=self.device)
        self._max_bucket = int(upload_chunk)
        for b in self.buffers:
            b.track_writes(True)
        existing = [(s, *written_slots(b)) for s, b in enumerate(self.buffers)]  # a resumed run
        for b in self.buffers:
            b.take_writes()  # already covered by the full upload
        self.upload(self._chunks(existing))

    def _chunks(self, writes: list[tuple[int, np.ndarray, np.ndarray]]) -> list[tuple[np.ndarray, ...]]:
        """(seed, env, slot, frame) upload chunks of every seed's writes (``bucketed``), the
        rows in seed order."""
        if not writes:
            return []
        seed = np.concatenate([np.full(env.size, s, np.int32) for s, env, _ in writes])
        env = np.concatenate([env for _, env, _ in writes])
        slots = np.concatenate([slots for _, _, slots in writes])

        def read(part: slice) -> np.ndarray:  # the piece's rows, seed by seed (contiguous)
            seeds, idx = seed[part], np.arange(seed.size)[part]
            return np.concatenate([self.buffers[s].frames_at(env[idx[seeds == s]], slots[idx[seeds == s]])
                                   for s in np.unique(seeds)])

        return bucketed((seed, env), slots, read, self._max_bucket, self.slots_per_env)

    def take(self) -> list[tuple[np.ndarray, ...]]:
        """The host half of a sync: every buffer's frames written since the last one."""
        return self._chunks([(s, *b.take_writes()) for s, b in enumerate(self.buffers)])

    def upload(self, chunks: list[tuple[np.ndarray, ...]]) -> None:
        """The device half of a sync (``frames`` is donated: one thread, in order)."""
        for chunk in chunks:
            self.frames = _scatter_seeds(self.frames, *chunk)

    def draw_indices(self, batch_size: int, steps: int = 1) -> dict[str, np.ndarray]:
        """Each buffer's draw (its own seeded Generator), stacked: leaves (N, K, B, ...)."""
        draws = [b.sample_indices(batch_size * steps) for b in self.buffers]
        return {k: np.stack([d[k].reshape(steps, batch_size, *d[k].shape[1:]) for d in draws])
                for k in draws[0]}

    def close(self) -> None:
        for b in self.buffers:
            b.track_writes(False)
        self.frames = None
