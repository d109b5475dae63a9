"""On-disk replay buffer: one memmapped .npy file per field, frames stored once, crash-safe commits.

Layout (see docs/replay.md for the full rationale):

* ``capacity`` frame slots are split into ``n_envs`` sub-rings of ``slots_per_env`` slots, one per
  parallel env, so each env's stream is contiguous and the next observation of the transition
  stored at absolute frame ``a`` is frame ``a + 1`` of the same sub-ring.
* Every env keeps an absolute frame counter (``frames_written``); frame ``a`` lives in slot
  ``a % slots_per_env``. The frames present are ``[max(oldest, w - S), w)``.
* Per slot: the frame, the transition that starts there (action, reward, terminated, truncated),
  ``flags`` (VALID: a transition starts here and its next frame is written; START: first frame of
  an episode), ``episode_start_index`` (absolute index of its episode's first frame, so frame
  stacks are clamped in O(1) without walking flags) and ``frame_index`` (the absolute frame held,
  written last: a slot whose ``frame_index`` disagrees with the header was overwritten by writes
  that were never committed, and is discarded on reopen).
* ``header.json`` describes what is committed; it is replaced atomically after the data it
  declares has been flushed. It also holds a CRC32 per chunk of ``checksum_chunk_slots`` slots
  of every env (``checksums``), over the committed data of those slots in every file; a commit
  recomputes only the chunks written since the previous one, and of those only the ones a
  background thread did not hash ahead (``checksums.py``).
* Reopening verifies every file against the header before mapping it (present, a readable .npy
  of the declared shape and dtype, of the size that implies) and then the checksums; a damaged
  directory raises :class:`ReplayCorruptError`, never reads as data.

This module holds :class:`ReplayBuffer` (create/reopen, add, commit, close, discard; sampling is
in ``sampling.py``) and re-exports the public names of the modules it is made of: ``layout``
(file specs, flags), ``errors``, ``header`` (read, replace, rewind), ``files`` (create, map,
free space), ``checksums`` and ``writeback`` (the background threads).
"""

from __future__ import annotations

import errno
import os
import threading
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from dodgerl.replay.checksums import (  # re-exported: code imports them from dodgerl.replay.buffer
    HASH_INTERVAL_S,
    BackgroundHasher,
    ChunkChecksums,
    chunk_slots,
)
from dodgerl.replay.errors import (  # re-exported: code imports them from dodgerl.replay.buffer
    CONFIG_KEYS,
    FRESH_REPLAY_HINT,
    DiskSpaceWarning,
    ReplayCorruptError,
    ReplayError,
    ReplayMismatchError,
)
from dodgerl.replay.files import check_free_space, create_fields, fsync_dir, open_field
from dodgerl.replay.files import discard as discard_directory
from dodgerl.replay.files import fmt_bytes as _fmt_bytes  # mirror.py imports it here
from dodgerl.replay.header import (  # re-exported: code imports them from dodgerl.replay.buffer
    check_settings,
    read_header,
    replace_header,
    rewind_check,
    rewind_header,
)
from dodgerl.replay.layout import (  # re-exported: code imports them from dodgerl.replay.buffer
    FORMAT_NAME,
    FORMAT_VERSION,
    HEADER_NAME,
    START,
    VALID,
    field_specs,
    required_bytes,
)
from dodgerl.replay.sampling import Sampling
from dodgerl.replay.writeback import Writeback

_PWRITE_MIN_FRAME_BYTES = 4096
"""Frames at least this large are written with ``os.pwrite`` (see ``ReplayBuffer.__init__``)."""


def _check_arguments(capacity: int, n_envs: int, frame_stack: int, action_dim: int, n_step: Any,
                     gamma: Any, writeback_s: float | None) -> None:
    if writeback_s is not None and not writeback_s > 0:
        raise ValueError(f"writeback_s must be > 0 or None, got {writeback_s!r}")
    if isinstance(n_step, bool) or not isinstance(n_step, (int, np.integer)) or n_step < 1:
        raise ValueError(f"n_step must be an integer >= 1, got {n_step!r}")
    if (isinstance(gamma, bool) or not isinstance(gamma, (int, float, np.number))
            or not 0.0 <= float(gamma) <= 1.0):
        raise ValueError(f"gamma must be a number in [0, 1], got {gamma!r}")
    if n_envs < 1:
        raise ValueError(f"n_envs must be >= 1, got {n_envs}")
    if frame_stack < 1:
        raise ValueError(f"frame_stack must be >= 1, got {frame_stack}")
    if action_dim < 1:
        raise ValueError(f"action_dim must be >= 1, got {action_dim}")
    if capacity // n_envs < 2:
        raise ValueError(
            f"capacity {capacity} gives {capacity // n_envs} slots per env for n_envs={n_envs};"
            " need at least 2 (a frame and its next)")


class ReplayBuffer(Sampling):
    """A uint8-friendly replay buffer on disk, batched over ``n_envs`` parallel envs.

    ``ReplayBuffer(directory, ...)`` creates the buffer, or reopens the one already in
    ``directory`` (continuing where it stopped; settings must match or ReplayMismatchError).
    ``add`` writes one step of every env, ``commit`` makes it survive a crash, ``sample`` draws
    uniformly among stored transitions. ``add``/``commit`` belong to one thread; ``sample`` may
    run concurrently in another (DeviceSampler does).

    ``n_step`` and ``gamma`` only shape what is sampled (they are not stored with the buffer): with
    ``n_step = n > 1`` the transition drawn at step t covers the steps t .. t+m-1 of its episode,
    m = min(n, steps left in the episode, steps stored so far); its ``rewards`` is
    sum_j gamma**j r_{t+j}, ``next_observations`` the observation at t+m, ``terminated`` whether
    the episode terminated at t+m, and ``discounts`` = gamma**m (the factor of the bootstrapped
    value; ``sac.Batch.discounts``). ``n_step = 1`` samples one-step transitions, no discounts.
    Pass the agent's gamma (``train`` does): the buffer cannot check that they agree.

    Creating a buffer fails with ENOSPC (writing nothing) when the disk cannot hold it, and
    warns with a :class:`DiskSpaceWarning` when it cannot also hold ``extra_bytes``, the bytes
    the run will write beside it (its kept checkpoints and best/: the caller computes them).
    Reopening verifies the files against the header (see the module docstring) and raises
    :class:`ReplayCorruptError` for a damaged directory, :class:`ReplayMismatchError` for one
    written with other settings; :meth:`discard` moves a damaged one aside.

    ``writeback_s`` (None: off) runs two daemon threads: one writes the files' dirty pages to
    disk every ``writeback_s`` seconds, the other hashes the checksum chunks the adds finished
    (every ``min(writeback_s, HASH_INTERVAL_S)`` seconds), so that ``commit`` only hashes what
    is left. Without them ``commit`` flushes and hashes everything written since the last one.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        capacity: int = 100_000,
        observation_shape: tuple[int, ...] = (64, 64, 3),
        observation_dtype: Any = np.uint8,
        action_dim: int = 2,
        n_envs: int = 1,
        frame_stack: int = 1,
        seed: int = 0,
        preallocate: bool = True,
        n_step: int = 1,
        gamma: float = 0.99,
        writeback_s: float | None = 2.0,
        extra_bytes: int = 0,
    ) -> None:
        _check_arguments(int(capacity), int(n_envs), int(frame_stack), int(action_dim), n_step,
                         gamma, writeback_s)
        self.n_step = int(n_step)
        self.gamma = float(gamma)
        self.directory = Path(directory)
        self.capacity = int(capacity)
        self.observation_shape = tuple(int(d) for d in observation_shape)
        self.observation_dtype = np.dtype(observation_dtype)
        self.action_dim = int(action_dim)
        self.n_envs = int(n_envs)
        self.frame_stack = int(frame_stack)
        self.slots_per_env = self.capacity // self.n_envs
        self._lock = threading.Lock()
        self._closed = False
        self._version = 0  # bumped by every add; keys the cache of sampleable slots
        self._cache: tuple[int, np.ndarray] | None = None  # (version, flat indices of _ok)
        self._written: list[np.ndarray] | None = None  # (env, slot) rows written, for a device mirror
        self._obs_fd: int | None = None  # set below, after the files exist
        header_path = self.directory / HEADER_NAME
        if header_path.exists():
            self._reopen(header_path)
        else:
            self._create(seed, preallocate, int(extra_bytes))
        # Image frames are written with pwrite through this descriptor, not through the mapping:
        # the first write to a page of a preallocated file through a mapping faults it in page
        # by page, several times slower than pwrite (docs/replay.md, "Image frames written with
        # pwrite"), which also releases the GIL. The mapping sees the same page cache. (Small
        # frames, e.g. state vectors, go through the mapping: one write for all envs.)
        self._frame_bytes = int(np.prod(self.observation_shape)) * self.observation_dtype.itemsize
        if hasattr(os, "pwrite") and self._frame_bytes >= _PWRITE_MIN_FRAME_BYTES:
            self._obs_fd = os.open(self.directory / "observations.npy", os.O_RDWR)
            self._close_obs_fd = weakref.finalize(self, os.close, self._obs_fd)
        self._writeback: Writeback | None = None
        self._hasher: BackgroundHasher | None = None
        if writeback_s is not None:
            self._start_threads(writeback_s)

    def _start_threads(self, writeback_s: float) -> None:
        this = weakref.ref(self)  # the threads must not keep an unclosed buffer alive

        def version() -> int | None:
            buffer = this()
            return None if buffer is None else buffer._version

        self._writeback = Writeback([self.directory / f"{name}.npy" for name in self._arrays],
                                    writeback_s, version)
        self._hasher = BackgroundHasher(self._checksums, min(writeback_s, HASH_INTERVAL_S), version,
                                        str(self.directory))

    # ------------------------------------------------------------------ create / reopen

    def _specs(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        return field_specs(self.n_envs, self.slots_per_env, self.observation_shape,
                           self.observation_dtype, self.action_dim)

    def _track_checksums(self) -> ChunkChecksums:
        self._checksums: ChunkChecksums = ChunkChecksums(
            self._arrays, self._frames_written, self.slots_per_env,
            chunk_slots(self.observation_shape, self.observation_dtype, self.slots_per_env), self._lock)
        return self._checksums

    def _create(self, seed: int, preallocate: bool, extra_bytes: int) -> None:
        need = required_bytes(self.capacity, self.observation_shape, self.observation_dtype,
                              self.action_dim, self.n_envs)
        check_free_space(self.directory, need, extra_bytes,
                         f"capacity {self.capacity}, observation {self.observation_shape} "
                         f"{self.observation_dtype}")
        created_dir = not self.directory.exists()
        self.directory.mkdir(parents=True, exist_ok=True)
        made: list[Path] = []
        try:
            self._arrays: dict[str, np.memmap] = {}
            self._arrays = create_fields(self.directory, self._specs(), preallocate, made)
            self._arrays["frame_index"][...] = -1
            self._arrays["episode_start_index"][...] = -1
            self._frames_written = np.zeros(self.n_envs, np.int64)
            self._oldest = np.zeros(self.n_envs, np.int64)
            self._ok = np.zeros((self.n_envs, self.slots_per_env), bool)
            self._n_ok = 0  # sampleable transitions: count_nonzero(_ok), kept by add
            self._episode_open = np.zeros(self.n_envs, bool)
            self._episode_start = np.zeros(self.n_envs, np.int64)
            self._transitions_added = 0
            self._commits = 0
            self.rng = np.random.Generator(np.random.PCG64(seed))
            self._track_checksums()
            self.commit()
        except BaseException:
            self._arrays = {}
            for path in made + [self.directory / (HEADER_NAME + ".tmp")]:
                path.unlink(missing_ok=True)
            if created_dir:
                import shutil

                shutil.rmtree(self.directory, ignore_errors=True)
            raise

    def _reopen(self, header_path: Path) -> None:
        header = read_header(self.directory)
        wanted = {
            "observation_shape": list(self.observation_shape),
            "observation_dtype": self.observation_dtype.str,
            "capacity": self.capacity,
            "action_dim": self.action_dim,
            "n_envs": self.n_envs,
        }
        specs = self._specs()
        declared = {name: {"shape": list(shape), "dtype": dtype.str} for name, (shape, dtype) in specs.items()}
        check_settings(self.directory, header, wanted, declared, self.slots_per_env)
        self._arrays = {name: open_field(self.directory / f"{name}.npy", shape, dtype)
                        for name, (shape, dtype) in specs.items()}
        envs = header["envs"]
        self._frames_written = np.array([e["frames_written"] for e in envs], np.int64)
        self._oldest = np.array([e["oldest_frame"] for e in envs], np.int64)
        self._transitions_added = int(header["transitions_added"])
        self._commits = int(header["commits"])
        self.rng = np.random.Generator(np.random.PCG64())
        try:
            self.rng.bit_generator.state = header["rng_state"]
        except (ValueError, TypeError, KeyError) as err:
            raise ReplayCorruptError(header_path, f"'rng_state' is not a PCG64 state ({err})") from None
        # Every open episode is cut: its last stored frame has no committed next, and the next add
        # starts a new episode. Slots overwritten by writes that never got committed (they carry
        # another frame_index) are dropped from the front of the window.
        self._episode_open = np.zeros(self.n_envs, bool)
        self._episode_start = np.zeros(self.n_envs, np.int64)
        S = self.slots_per_env
        for e in range(self.n_envs):
            w = int(self._frames_written[e])
            self._oldest[e] = max(int(self._oldest[e]), w - S, 0) + self._overwritten_slots(e).size
        # Slots of frames before the oldest one kept hold nothing the buffer reads, and writes
        # after the commit may have changed them: their chunks are not verified (but recomputed).
        unused = [np.arange(max(int(self._frames_written[e]) - S, 0), int(self._oldest[e])) % S
                  for e in range(self.n_envs)]
        self._track_checksums().verify(header, self._frames_written, unused, self.directory)
        for e in range(self.n_envs):
            w = int(self._frames_written[e])
            if w > 0:
                # The last frame may carry a VALID flag set by an uncommitted add; its next is gone.
                self._arrays["flags"][e, (w - 1) % self.slots_per_env] &= ~VALID
        self._ok = self._scan_sampleable()
        self._n_ok = int(np.count_nonzero(self._ok))

    def _overwritten_slots(self, e: int) -> np.ndarray:
        """Slots of env ``e``'s committed window that writes made after the commit overwrote:
        the frames at the front of the window, where the ring went on. Any other slot whose
        ``frame_index`` disagrees with the header is damage (ReplayCorruptError)."""
        S = self.slots_per_env
        w = int(self._frames_written[e])
        window = np.arange(max(int(self._oldest[e]), w - S, 0), w, dtype=np.int64)
        held = np.asarray(self._arrays["frame_index"][e, window % S])
        bad = np.flatnonzero(held != window)
        if bad.size == 0:
            return bad
        # A write in progress sets -1, a finished one the later frame of the slot (a rewind to an
        # older header may find frames several laps on). They are a prefix of the window.
        later = (held[bad] == -1) | ((held[bad] > window[bad]) & ((held[bad] - window[bad]) % S == 0))
        wrong = np.flatnonzero((bad != np.arange(bad.size)) | ~later)
        if wrong.size:
            i = bad[wrong[0]]
            raise ReplayCorruptError(
                self.directory / "frame_index.npy",
                f"env {e} slot {int(window[i] % S)} holds frame {int(held[i])} where header.json "
                f"declares frame {int(window[i])}")
        return window[bad] % S


    # ------------------------------------------------------------------ checksums

    def _full_checksums(self, w: np.ndarray | None = None) -> dict[str, Any]:
        """Every chunk's CRC32, computed from the files (for frames_written ``w``: now)."""
        return self._checksums.full(self._frames_written if w is None else w)

    def _updated_checksums(self, w: np.ndarray) -> dict[str, Any]:
        """The checksums for a commit declaring ``w``: the last commit's, with the chunks written
        since and the stale ones recomputed, or taken from the background pass."""
        return self._checksums.commit_table(w)

    @staticmethod
    def discard(directory: str | os.PathLike) -> Path:
        """Move the replay directory ``directory`` aside (to ``<directory>.discarded-<n>``, the
        first free n) so that a fresh buffer can be created in its place; returns where it went.
        Nothing is deleted. Used to resume a run whose buffer is damaged or was written with
        other settings (``--fresh-replay``): the agent is kept, the buffer starts empty."""
        return discard_directory(Path(directory))

    # ------------------------------------------------------------------ writing

    def _check_batch(self, name: str, x: Any, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        x = np.asarray(x)
        if x.shape != shape:
            raise ValueError(f"{name}: expected shape {shape}, got {x.shape}")
        if not np.can_cast(x.dtype, dtype, casting="same_kind"):
            raise TypeError(f"{name}: cannot store dtype {x.dtype} as {dtype}")
        return x

    def _write_frames(self, env: np.ndarray, frames: np.ndarray, episode_start: np.ndarray) -> None:
        """Write the next frame of each env in ``env`` (distinct envs). Caller holds the lock."""
        a = self._frames_written[env]
        s = a % self.slots_per_env
        arr = self._arrays
        # Invalidate first, data next, identity last, each for all envs before the next: a kill at
        # any instruction leaves each slot with either its old frame intact or a frame_index that
        # says it does not hold frame a. frame_index goes first: a slot whose committed data
        # (flags included) changed must never still declare its committed frame (the checksums).
        self._checksums.note_writes(env, s)  # a CRC32 hashed ahead of these slots is out of date
        arr["frame_index"][env, s] = -1
        arr["flags"][env, s] = 0
        self._n_ok -= int(np.count_nonzero(self._ok[env, s]))
        self._ok[env, s] = False  # no transition starts at an overwritten slot until it is VALID again
        if self._obs_fd is None:
            arr["observations"][env, s] = frames
        else:
            base = arr["observations"].offset  # of the data, after the .npy header
            for i, (e, slot) in enumerate(zip(env.tolist(), s.tolist())):
                view = memoryview(np.ascontiguousarray(frames[i])).cast("B")
                offset = base + (e * self.slots_per_env + slot) * self._frame_bytes
                if os.pwrite(self._obs_fd, view, offset) != self._frame_bytes:
                    raise OSError(errno.EIO, f"short write of a frame to {self.directory / 'observations.npy'}")
        arr["episode_start_index"][env, s] = episode_start
        arr["frame_index"][env, s] = a
        starts = a == episode_start
        if starts.any():
            arr["flags"][env[starts], s[starts]] = START
        self._frames_written[env] = a + 1
        if self._written is not None:
            self._written.append(np.stack([env, s], axis=1))

    def add(self, observations: Any, actions: Any, rewards: Any, next_observations: Any,
            terminated: Any, truncated: Any) -> None:
        """Store one step of every env. ``next_observations`` is the true next observation."""
        n = self.n_envs
        obs_shape = (n, *self.observation_shape)
        observations = self._check_batch("observations", observations, obs_shape,
                                         self.observation_dtype)
        next_observations = self._check_batch("next_observations", next_observations, obs_shape,
                                              self.observation_dtype)
        actions = self._check_batch("actions", actions, (n, self.action_dim), np.dtype(np.float32))
        rewards = self._check_batch("rewards", rewards, (n,), np.dtype(np.float32))
        terminated = np.asarray(terminated).reshape(-1)
        truncated = np.asarray(truncated).reshape(-1)
        if terminated.shape != (n,) or truncated.shape != (n,):
            raise ValueError(f"terminated/truncated: expected shape ({n},), got "
                             f"{terminated.shape} / {truncated.shape}")
        arr = self._arrays
        every = np.arange(n)
        with self._lock:
            if self._closed:
                raise ValueError("add on a closed ReplayBuffer")
            new = np.flatnonzero(~self._episode_open)
            if new.size:  # envs starting an episode: its first frame first
                self._episode_start[new] = self._frames_written[new]
                self._write_frames(new, observations[new], self._episode_start[new])
                self._episode_open[new] = True
            s = (self._frames_written - 1) % self.slots_per_env
            self._checksums.note_writes(every, s)
            arr["actions"][every, s] = actions
            arr["rewards"][every, s] = rewards
            arr["terminated"][every, s] = terminated.astype(bool)
            arr["truncated"][every, s] = truncated.astype(bool)
            self._write_frames(every, next_observations, self._episode_start)
            arr["flags"][every, s] |= VALID  # last: the transition exists once all of it is written
            self._n_ok += n - int(np.count_nonzero(self._ok[every, s]))
            self._ok[every, s] = True
            # An episode's final frame keeps its slot and starts nothing.
            self._episode_open[terminated.astype(bool) | truncated.astype(bool)] = False
            self._transitions_added += n
            self._version += 1

    def _header(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "capacity": self.capacity,
            "n_envs": self.n_envs,
            "slots_per_env": self.slots_per_env,
            "observation_shape": list(self.observation_shape),
            "observation_dtype": self.observation_dtype.str,
            "action_dim": self.action_dim,
            "frame_stack": self.frame_stack,
            "files": {name: {"shape": list(shape), "dtype": dtype.str}
                      for name, (shape, dtype) in self._specs().items()},
            "envs": [
                {"frames_written": int(self._frames_written[e]),
                 "oldest_frame": int(self._oldest[e]),
                 "episode_open": bool(self._episode_open[e]),
                 "episode_start": int(self._episode_start[e])}
                for e in range(self.n_envs)
            ],
            "transitions_added": self._transitions_added,
            "commits": self._commits,
            "rng_state": self.rng.bit_generator.state,
        }

    def commit(self) -> dict[str, Any]:
        """Flush the data, then atomically replace header.json: what it declares survives a crash.
        Returns the header written (a checkpoint keeps it, so that a resume from that checkpoint
        can bring the buffer back to this state: :func:`rewind_header`)."""
        with self._lock:
            self._commits += 1
            header = self._header()  # a consistent snapshot of the write state and the rng
            w = self._frames_written.copy()
        # Adds come from this thread: nothing is written while the checksums are computed.
        checksums = self._updated_checksums(w)
        header["checksums"] = checksums
        for arr in self._arrays.values():
            arr.flush()  # msync: data reaches the disk before the header that declares it
        if self._obs_fd is not None:
            os.fsync(self._obs_fd)  # the frames written with pwrite (msync of the range has them too)
        try:
            replace_header(self.directory, header)
        except BaseException:
            with self._lock:
                self._commits -= 1
            raise
        self._checksums.committed(checksums, w)
        fsync_dir(self.directory)
        return header

    def close(self, commit: bool = True) -> None:
        """Commit and release the files. Idempotent. ``commit=False`` releases them without a
        commit: the header keeps declaring what the last commit did, as after a crash (the
        training loop closes so when it stops on an exception, its checkpoint being older)."""
        if self._closed:
            return
        for thread in (self._hasher, self._writeback):
            if thread is not None:
                thread.stop()
        if commit:
            self.commit()
        if self._obs_fd is not None:
            self._close_obs_fd()
            self._obs_fd = None
        with self._lock:
            self._closed = True
            self._arrays = {}
            self._checksums.release()
            self._cache = None


    @property
    def writebacks(self) -> int:
        """How many passes of the background writeback have written every file's dirty pages."""
        return 0 if self._writeback is None else self._writeback.count

    def __enter__(self) -> ReplayBuffer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ introspection

    @property
    def frames_written(self) -> np.ndarray:
        """Absolute frame counter of each env (frames ever written to its sub-ring)."""
        return self._frames_written.copy()

    @property
    def transitions_added(self) -> int:
        return self._transitions_added

    def __repr__(self) -> str:
        return (f"ReplayBuffer({str(self.directory)!r}, capacity={self.capacity}, "
                f"observation_shape={self.observation_shape}, "
                f"observation_dtype={self.observation_dtype}, action_dim={self.action_dim}, "
                f"n_envs={self.n_envs}, frame_stack={self.frame_stack}, n_step={self.n_step}, "
                f"gamma={self.gamma}, len={len(self)})")
