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
  recomputes only the chunks written since the previous one.
* Reopening verifies every file against the header before mapping it (present, a readable .npy
  of the declared shape and dtype, of the size that implies) and then the checksums; a damaged
  directory raises :class:`ReplayCorruptError`, never reads as data.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import threading
import warnings
import weakref
import zlib
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_NAME = "dodgerl-replay"
FORMAT_VERSION = 1
HEADER_NAME = "header.json"

VALID = np.uint8(1)  # a transition starts at this slot: action/reward stored, next frame written
START = np.uint8(2)  # this slot holds the first frame of an episode

_DISK_MARGIN_BYTES = 64 << 20  # free space kept beyond the buffer itself (headers, logs, fs slack)


FRESH_REPLAY_HINT = "resume with --fresh-replay to drop the buffer and keep the agent"
"""What every damaged- or mismatched-replay error tells the user to do."""

_CHUNK_BYTES = 4 << 20  # a checksum covers at most about this many bytes of frames per env
_CHECKED_FIELDS = ("observations", "frame_index", "episode_start_index")
"""Fields of a slot written with its frame (``_write_frames``), fixed once it is committed."""
_TRANSITION_FIELDS = ("actions", "rewards", "terminated", "truncated", "flags")
"""Fields of a slot that the add after the one writing its frame may still change (the
transition starting there, its VALID bit): not checksummed for an env's newest frame."""

CONFIG_KEYS = {
    "capacity": "replay.buffer_size",
    "n_envs": "train.n_envs",
    "observation_shape": "observation_shape (env.image_size, env.observation, env.frame_stack)",
    "observation_dtype": "observation_dtype (env.observation)",
    "action_dim": "action_dim (the env's action space)",
}
"""The configuration key behind each setting of a buffer, named by ReplayMismatchError."""


class ReplayError(Exception):
    """The replay directory cannot be used as it is."""


class ReplayMismatchError(ReplayError, ValueError):
    """The buffer on disk was created with a different shape, dtype, capacity, ... than requested.

    ``key`` is the configuration key that changed (``CONFIG_KEYS``), ``field`` the buffer's
    setting, ``written`` and ``requested`` its value on disk and now (None where the error is
    not about one setting)."""

    def __init__(self, message: str, key: str | None = None, field: str | None = None,
                 written: Any = None, requested: Any = None) -> None:
        super().__init__(message)
        self.key, self.field, self.written, self.requested = key, field, written, requested


class ReplayCorruptError(ReplayError):
    """A file of the replay directory is missing, truncated, unreadable or fails its checksum.

    ``path`` is the file; the message names it, says what is wrong and how to go on."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}; the replay buffer is damaged: {FRESH_REPLAY_HINT}")
        self.path = path


class DiskSpaceWarning(UserWarning):
    """The disk holds the replay buffer but not what the run will write beside it (checkpoints)."""


_HEADER_TYPES: dict[str, type | tuple[type, ...]] = {
    "format": str, "version": int, "capacity": int, "n_envs": int, "slots_per_env": int,
    "observation_shape": list, "observation_dtype": str, "action_dim": int, "files": dict,
    "envs": list, "transitions_added": int, "commits": int, "rng_state": dict,
}
_ENV_TYPES = {"frames_written": int, "oldest_frame": int}


def read_header(directory: str | Path) -> dict[str, Any]:
    """The header of the buffer in ``directory``, checked to be one: a JSON object with every key
    a reopen reads, of the right type. Raises ReplayCorruptError naming the file and the problem
    (ReplayMismatchError for a header of another format version)."""
    path = Path(directory) / HEADER_NAME
    if not path.is_file():
        raise ReplayCorruptError(path, "is missing")
    try:
        header = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ReplayCorruptError(path, f"is not valid JSON (not UTF-8 text: {err})") from None
    except json.JSONDecodeError as err:
        raise ReplayCorruptError(path, f"is not valid JSON ({err})") from None
    if not isinstance(header, dict):
        raise ReplayCorruptError(path, f"is not a JSON object (it holds a {type(header).__name__})")
    if header.get("format") != FORMAT_NAME:
        raise ReplayCorruptError(path, f"is not a {FORMAT_NAME} header (format "
                                       f"{header.get('format')!r})")
    if header.get("version") != FORMAT_VERSION:
        raise ReplayMismatchError(
            f"{path}: version: on disk {header.get('version')!r}, this code reads "
            f"{FORMAT_VERSION}; {FRESH_REPLAY_HINT}", field="version",
            written=header.get("version"), requested=FORMAT_VERSION)
    for key, kind in _HEADER_TYPES.items():
        if key not in header:
            raise ReplayCorruptError(path, f"has no {key!r}")
        if not isinstance(header[key], kind) or isinstance(header[key], bool):
            raise ReplayCorruptError(path, f"{key!r} is {header[key]!r}, not of type {kind}")
    if len(header["envs"]) != header["n_envs"]:
        raise ReplayCorruptError(path, f"'envs' has {len(header['envs'])} entries for "
                                       f"n_envs={header['n_envs']}")
    for e, env in enumerate(header["envs"]):
        for key, kind in _ENV_TYPES.items():
            value = env.get(key) if isinstance(env, dict) else None
            if not isinstance(value, kind) or isinstance(value, bool) or value < 0:
                raise ReplayCorruptError(path, f"envs[{e}].{key} is {value!r}, not a count")
        if env["oldest_frame"] > env["frames_written"]:
            raise ReplayCorruptError(path, f"envs[{e}]: oldest_frame {env['oldest_frame']} is "
                                           f"after frames_written {env['frames_written']}")
    return header


def _open_field(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> np.memmap:
    """Map an existing .npy data file read-write, after checking that it is one of ``shape`` and
    ``dtype`` and of the size they imply: numpy's memmap would extend a short file with zeros."""
    if not path.is_file():
        raise ReplayCorruptError(path, "is missing")
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                on_disk, fortran, on_disk_dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                on_disk, fortran, on_disk_dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
            offset = f.tell()
            size = os.fstat(f.fileno()).st_size
    except (ValueError, SyntaxError, OSError) as err:
        raise ReplayCorruptError(path, f"is not a readable .npy file ({err})") from None
    if tuple(on_disk) != tuple(shape) or np.dtype(on_disk_dtype) != dtype or fortran:
        raise ReplayCorruptError(
            path, f"holds {tuple(on_disk)} {np.dtype(on_disk_dtype)}"
                  f"{' (Fortran order)' if fortran else ''}, header.json declares {tuple(shape)} {dtype}")
    expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size != expected:
        raise ReplayCorruptError(
            path, f"is {size:,} bytes where header.json implies {expected:,} ({tuple(shape)} "
                  f"{dtype}): {'truncated' if size < expected else 'too long'}")
    return np.memmap(path, dtype=dtype, mode="r+", offset=offset, shape=shape)


def chunk_slots(observation_shape: tuple[int, ...], observation_dtype: Any, slots_per_env: int) -> int:
    """Slots per checksum chunk: as many as hold about ``_CHUNK_BYTES`` of frames (at least 1,
    at most a whole sub-ring). A commit re-reads at most one partial chunk per env beyond what
    it adds."""
    frame = int(np.prod(observation_shape, dtype=np.int64)) * np.dtype(observation_dtype).itemsize
    return max(1, min(int(slots_per_env), _CHUNK_BYTES // max(frame, 1)))


def _rewind_plan(directory: Path, header: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """(the buffer's current header, transitions a rewind to ``header`` drops: < 0 when the
    buffer is behind ``header``); raises ReplayMismatchError if ``header`` is not of this buffer."""
    if not (directory / HEADER_NAME).is_file():
        raise ReplayMismatchError(f"cannot rewind {directory}: no {HEADER_NAME}")
    current = read_header(directory)
    for field in ("format", "version", "capacity", "n_envs", "slots_per_env", "observation_shape",
                  "observation_dtype", "action_dim", "files"):
        if header.get(field) != current.get(field):
            raise ReplayMismatchError(
                f"cannot rewind {directory}: the checkpoint's replay header has {field}="
                f"{header.get(field)!r}, the buffer {current.get(field)!r}; nothing was changed")
    dropped = int(current.get("transitions_added", 0)) - int(header.get("transitions_added", 0))
    if header.get("commits", 0) > current.get("commits", 0):
        dropped = min(dropped, -1)
    return current, dropped


def rewind_check(directory: str | Path, header: dict[str, Any]) -> int:
    """How many transitions :func:`rewind_header` would drop (read only): 0 when the buffer
    declares ``header``'s data already, < 0 when it is behind ``header`` (recreated since?).
    Raises ReplayMismatchError when ``header`` is not of this buffer (another format, shape or
    capacity)."""
    return _rewind_plan(Path(directory), header)[1]


def rewind_header(directory: str | Path, header: dict[str, Any], keep_as: str | Path | None = None
                  ) -> int:
    """Make the closed buffer in ``directory`` declare ``header`` again: a header an earlier
    ``commit`` of this buffer returned (a checkpoint keeps it). Returns the number of transitions
    dropped (as :func:`rewind_check`).

    Used when training resumes from a checkpoint older than the buffer's last commit: what was
    added after that checkpoint belongs to the abandoned continuation. Reopening then treats the
    slots those adds overwrote like uncommitted writes after a crash (their ``frame_index`` no
    longer matches: they leave the window), and the frames added after it are ignored and later
    overwritten. When something is dropped, the header being replaced is first copied to
    ``keep_as`` if given. When nothing is dropped, only the sampling RNG's state is set back to
    ``header``'s (batches drawn after that commit, e.g. by sampler threads before they stopped,
    moved it on). A buffer behind ``header`` is left as it is.

    Raises ReplayMismatchError (changing nothing) when ``header`` is not of this buffer.
    """
    directory = Path(directory)
    current, dropped = _rewind_plan(directory, header)
    if dropped < 0:
        return dropped
    if dropped == 0:
        # The same data; a commit that added nothing (e.g. the one closing the buffer) counts
        # as the same state.
        header = {**current, "rng_state": header["rng_state"]}
        if header == current:
            return 0
    elif keep_as is not None:
        Path(keep_as).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(directory / HEADER_NAME, keep_as)
    _replace_header(directory, header)
    _fsync_dir(directory)
    return dropped


def _replace_header(directory: Path, header: dict[str, Any]) -> None:
    """Atomically replace ``directory/header.json`` with ``header``: written to a temporary file
    and fsynced, then renamed over it (the caller fsyncs the directory). On a failure before the
    rename the temporary file is removed and header.json is unchanged."""
    tmp = directory / (HEADER_NAME + ".tmp")
    try:
        with open(tmp, "w") as f:
            json.dump(header, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, directory / HEADER_NAME)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


_PWRITE_MIN_FRAME_BYTES = 4096
"""Frames at least this large are written with ``os.pwrite`` (see ``ReplayBuffer.__init__``)."""


def _field_specs(
    n_envs: int, slots: int, observation_shape: tuple[int, ...], observation_dtype: np.dtype,
    action_dim: int,
) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Name -> (shape, dtype) of every data file. One place, used by create, reopen and size checks."""
    return {
        "observations": ((n_envs, slots, *observation_shape), np.dtype(observation_dtype)),
        "actions": ((n_envs, slots, action_dim), np.dtype(np.float32)),
        "rewards": ((n_envs, slots), np.dtype(np.float32)),
        "terminated": ((n_envs, slots), np.dtype(np.uint8)),
        "truncated": ((n_envs, slots), np.dtype(np.uint8)),
        "flags": ((n_envs, slots), np.dtype(np.uint8)),
        "episode_start_index": ((n_envs, slots), np.dtype(np.int64)),
        "frame_index": ((n_envs, slots), np.dtype(np.int64)),
    }


def _npy_bytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    """Size of a .npy file with this shape (data + a generous 4 KiB for the format header)."""
    return int(np.prod(shape, dtype=np.int64)) * dtype.itemsize + 4096


def required_bytes(
    capacity: int, observation_shape: tuple[int, ...], observation_dtype: Any = np.uint8,
    action_dim: int = 2, n_envs: int = 1,
) -> int:
    """Bytes on disk a buffer with these settings needs (all files, preallocated)."""
    slots = capacity // n_envs
    specs = _field_specs(n_envs, slots, tuple(observation_shape), np.dtype(observation_dtype),
                         action_dim)
    return sum(_npy_bytes(s, d) for s, d in specs.values()) + 64 * 1024


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def _fmt_bytes(n: int) -> str:
    return f"{n:,} bytes ({n / 2**30:.2f} GiB)"


class ReplayBuffer:
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
        if writeback_s is not None and not writeback_s > 0:
            raise ValueError(f"writeback_s must be > 0 or None, got {writeback_s!r}")
        if isinstance(n_step, bool) or not isinstance(n_step, (int, np.integer)) or n_step < 1:
            raise ValueError(f"n_step must be an integer >= 1, got {n_step!r}")
        if (isinstance(gamma, bool) or not isinstance(gamma, (int, float, np.number))
                or not 0.0 <= float(gamma) <= 1.0):
            raise ValueError(f"gamma must be a number in [0, 1], got {gamma!r}")
        self.n_step = int(n_step)
        self.gamma = float(gamma)
        self.directory = Path(directory)
        self.capacity = int(capacity)
        self.observation_shape = tuple(int(d) for d in observation_shape)
        self.observation_dtype = np.dtype(observation_dtype)
        self.action_dim = int(action_dim)
        self.n_envs = int(n_envs)
        self.frame_stack = int(frame_stack)
        if self.n_envs < 1:
            raise ValueError(f"n_envs must be >= 1, got {n_envs}")
        if self.frame_stack < 1:
            raise ValueError(f"frame_stack must be >= 1, got {frame_stack}")
        if self.action_dim < 1:
            raise ValueError(f"action_dim must be >= 1, got {action_dim}")
        self.slots_per_env = self.capacity // self.n_envs
        if self.slots_per_env < 2:
            raise ValueError(
                f"capacity {capacity} gives {self.slots_per_env} slots per env for n_envs={n_envs};"
                " need at least 2 (a frame and its next)")
        self._lock = threading.Lock()
        self._closed = False
        self._version = 0  # bumped by every add; keys the cache of sampleable slots
        self._cache: tuple[int, np.ndarray] | None = None  # (version, flat indices of _ok)
        self._written: list[np.ndarray] | None = None  # (env, slot) rows written, for a device mirror

        self._obs_fd: int | None = None  # set below, after the files exist
        # Checksums of the last commit ({field: {"chunk_slots", "crc32": per env, per chunk}}),
        # the frames_written it declared, and chunks whose stored CRC is out of date (found
        # overwritten by uncommitted writes on reopen): a commit recomputes only what changed.
        self._checksums: dict[str, Any] | None = None
        self._committed_w: np.ndarray | None = None
        self._stale: dict[str, list[set[int]]] = {}
        header_path = self.directory / HEADER_NAME
        if header_path.exists():
            self._reopen(header_path)
        else:
            self._create(seed, preallocate, int(extra_bytes))
        # Image frames are written with pwrite through this descriptor, not through the mapping:
        # the first write to a page of a preallocated file through a mapping faults it in page
        # by page, 13-15 ms per 16 256x256 frames on the CI box against 1.8 ms with pwrite,
        # which also releases the GIL. The mapping sees the same page cache. (Small frames,
        # e.g. state vectors, go through the mapping: one write for all envs.)
        self._frame_bytes = int(np.prod(self.observation_shape)) * self.observation_dtype.itemsize
        if hasattr(os, "pwrite") and self._frame_bytes >= _PWRITE_MIN_FRAME_BYTES:
            self._obs_fd = os.open(self.directory / "observations.npy", os.O_RDWR)
            self._close_obs_fd = weakref.finalize(self, os.close, self._obs_fd)
        this = weakref.ref(self)  # the thread must not keep an unclosed buffer alive

        def version() -> int | None:
            buffer = this()
            return None if buffer is None else buffer._version

        self._writeback = None if writeback_s is None else _Writeback(
            [self.directory / f"{name}.npy" for name in self._arrays], writeback_s, version)

    # ------------------------------------------------------------------ create / reopen

    def _specs(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        return _field_specs(self.n_envs, self.slots_per_env, self.observation_shape,
                            self.observation_dtype, self.action_dim)

    def _create(self, seed: int, preallocate: bool, extra_bytes: int) -> None:
        need = required_bytes(self.capacity, self.observation_shape, self.observation_dtype,
                              self.action_dim, self.n_envs)
        free = shutil.disk_usage(_existing_ancestor(self.directory)).free
        if need + _DISK_MARGIN_BYTES > free:
            raise OSError(
                errno.ENOSPC,
                f"replay buffer at {self.directory} needs {_fmt_bytes(need)} (capacity "
                f"{self.capacity}, observation {self.observation_shape} {self.observation_dtype}) "
                f"plus a {_fmt_bytes(_DISK_MARGIN_BYTES)} margin, but only {_fmt_bytes(free)} "
                "are free; nothing was written")
        if extra_bytes > 0 and need + extra_bytes + _DISK_MARGIN_BYTES > free:
            warnings.warn(DiskSpaceWarning(
                f"the disk will fill during the run: the replay buffer at {self.directory} needs "
                f"{_fmt_bytes(need)} and the run's checkpoints (kept + best/) "
                f"{_fmt_bytes(extra_bytes)}, plus a {_fmt_bytes(_DISK_MARGIN_BYTES)} margin, but "
                f"only {_fmt_bytes(free)} are free; free space, or lower replay.buffer_size or "
                "train.keep_checkpoints"), stacklevel=3)
        created_dir = not self.directory.exists()
        self.directory.mkdir(parents=True, exist_ok=True)
        made: list[Path] = []
        try:
            self._arrays: dict[str, np.memmap] = {}
            for name, (shape, dtype) in self._specs().items():
                path = self.directory / f"{name}.npy"
                made.append(path)
                arr = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
                if preallocate:
                    # Reserve every block now: a full disk fails here with ENOSPC/EFBIG instead
                    # of a SIGBUS on some later page fault in the middle of training.
                    with open(path, "r+b") as f:
                        os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
                self._arrays[name] = arr
            self._arrays["frame_index"][...] = -1
            self._arrays["episode_start_index"][...] = -1
            self._frames_written = np.zeros(self.n_envs, np.int64)
            self._oldest = np.zeros(self.n_envs, np.int64)
            self._ok = np.zeros((self.n_envs, self.slots_per_env), bool)
            self._episode_open = np.zeros(self.n_envs, bool)
            self._episode_start = np.zeros(self.n_envs, np.int64)
            self._transitions_added = 0
            self._commits = 0
            self.rng = np.random.Generator(np.random.PCG64(seed))
            self.commit()
        except BaseException:
            self._arrays = {}
            for path in made + [self.directory / (HEADER_NAME + ".tmp")]:
                path.unlink(missing_ok=True)
            if created_dir:
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
        for field, value in wanted.items():
            if header.get(field) != value:
                key = CONFIG_KEYS[field]
                raise ReplayMismatchError(
                    f"{key}: the replay at {self.directory} was written with {header.get(field)}, "
                    f"the config now says {value} (the buffer's {field}); nothing was changed: "
                    f"resume with the settings it was written with, or {FRESH_REPLAY_HINT}",
                    key=key, field=field, written=header.get(field), requested=value)
        specs = self._specs()
        declared = {name: {"shape": list(shape), "dtype": dtype.str} for name, (shape, dtype) in specs.items()}
        if header["files"] != declared or header["slots_per_env"] != self.slots_per_env:
            raise ReplayCorruptError(header_path, "its 'files' or 'slots_per_env' disagree with "
                                                  "its capacity, n_envs and observation settings")
        self._arrays = {name: _open_field(self.directory / f"{name}.npy", shape, dtype)
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
        self._verify_checksums(header, unused)
        for e in range(self.n_envs):
            w = int(self._frames_written[e])
            if w > 0:
                # The last frame may carry a VALID flag set by an uncommitted add; its next is gone.
                self._arrays["flags"][e, (w - 1) % self.slots_per_env] &= ~VALID
        self._ok = self._scan_sampleable()

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

    def _chunk_slots(self, name: str) -> int:
        if name == "observations":
            return chunk_slots(self.observation_shape, self.observation_dtype, self.slots_per_env)
        return min(self.slots_per_env, 1024)

    def _chunk_crc(self, name: str, e: int, c: int, w: int) -> int:
        """CRC32 of chunk ``c`` of env ``e``'s slots in file ``name``, over the slots a commit
        declaring ``w`` frames written holds committed data in: the slots written, without the
        transition fields of the newest frame (the next add writes them)."""
        S, C = self.slots_per_env, self._chunk_slots(name)
        lo, hi = c * C, min((c + 1) * C, S, w)
        if hi <= lo:
            return 0
        row = self._arrays[name][e]
        newest = (w - 1) % S
        if name in _TRANSITION_FIELDS and lo <= newest < hi:
            return zlib.crc32(row[newest + 1:hi], zlib.crc32(row[lo:newest]))
        return zlib.crc32(row[lo:hi])

    def _n_chunks(self, name: str) -> int:
        return -(-self.slots_per_env // self._chunk_slots(name))

    def _full_checksums(self, w: np.ndarray | None = None) -> dict[str, Any]:
        """Every chunk's CRC32, computed from the files (for frames_written ``w``: now)."""
        w = self._frames_written if w is None else w
        return {name: {"chunk_slots": self._chunk_slots(name),
                       "crc32": [[self._chunk_crc(name, e, c, int(w[e])) for c in range(self._n_chunks(name))]
                                 for e in range(self.n_envs)]}
                for name in self._arrays}

    def _chunks_of(self, name: str, slots: np.ndarray) -> set[int]:
        return set((np.asarray(slots) // self._chunk_slots(name)).tolist())

    def _updated_checksums(self, w: np.ndarray) -> dict[str, Any]:
        """The checksums for a commit declaring ``w``: the last commit's, with the chunks written
        since (its newest frame's slot on: the add after it wrote that slot's transition) and
        the stale ones recomputed."""
        if self._checksums is None or self._committed_w is None:
            return self._full_checksums(w)
        S = self.slots_per_env
        out = {}
        for name, table in self._checksums.items():
            rows = []
            for e in range(self.n_envs):
                row = list(table["crc32"][e])
                prev, now = int(self._committed_w[e]), int(w[e])
                dirty = set(self._stale.get(name, [set()] * self.n_envs)[e])
                if now > prev:
                    first = max(prev - 1, 0)
                    dirty |= (set(range(len(row))) if now - first >= S else
                              self._chunks_of(name, np.arange(first, now) % S))
                for c in dirty:
                    row[c] = self._chunk_crc(name, e, c, now)
                rows.append(row)
            out[name] = {"chunk_slots": table["chunk_slots"], "crc32": rows}
        return out

    def _verify_checksums(self, header: dict[str, Any], overwritten: list[np.ndarray]) -> None:
        """Check every chunk's CRC32 against the header, except chunks holding slots that writes
        after the commit may have overwritten (``overwritten``: those of frames before the oldest
        kept; they are recomputed at the next commit).
        A header without checksums (written before they existed) is taken as it is."""
        self._committed_w = self._frames_written.copy()
        stored = header.get("checksums")
        if not isinstance(stored, dict) or set(stored) != set(self._arrays):
            return
        for name, table in stored.items():
            rows = table.get("crc32") if isinstance(table, dict) else None
            if (not isinstance(rows, list) or table.get("chunk_slots") != self._chunk_slots(name)
                    or len(rows) != self.n_envs
                    or any(not isinstance(row, list) or len(row) != self._n_chunks(name)
                           or not all(isinstance(x, int) for x in row) for row in rows)):
                raise ReplayCorruptError(self.directory / HEADER_NAME,
                                         f"'checksums' of {name} do not fit the buffer")
        self._stale = {name: [self._chunks_of(name, overwritten[e]) for e in range(self.n_envs)]
                       for name in stored}
        C = {name: self._chunk_slots(name) for name in stored}
        for e in range(self.n_envs):
            w = int(self._frames_written[e])
            for name, table in stored.items():
                for c, expected in enumerate(table["crc32"][e]):
                    if c in self._stale[name][e]:
                        continue
                    got = self._chunk_crc(name, e, c, w)
                    if got != expected:
                        lo, hi = c * C[name], min((c + 1) * C[name], self.slots_per_env, w)
                        raise ReplayCorruptError(
                            self.directory / f"{name}.npy",
                            f"env {e} slots {lo}..{hi - 1} fail their checksum (CRC32 {got:#010x}, "
                            f"header.json recorded {expected:#010x} at commit): the data changed "
                            "after it was committed")
        self._checksums = stored

    @staticmethod
    def discard(directory: str | os.PathLike) -> Path:
        """Move the replay directory ``directory`` aside (to ``<directory>.discarded-<n>``, the
        first free n) so that a fresh buffer can be created in its place; returns where it went.
        Nothing is deleted. Used to resume a run whose buffer is damaged or was written with
        other settings (``--fresh-replay``): the agent is kept, the buffer starts empty."""
        directory = Path(directory)
        if not directory.exists():
            raise FileNotFoundError(errno.ENOENT, "no replay directory to discard", str(directory))
        n = 1
        while (target := directory.with_name(f"{directory.name}.discarded-{n}")).exists():
            n += 1
        os.replace(directory, target)
        _fsync_dir(directory.parent)
        return target

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
        arr["frame_index"][env, s] = -1
        arr["flags"][env, s] = 0
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
            arr["actions"][every, s] = actions
            arr["rewards"][every, s] = rewards
            arr["terminated"][every, s] = terminated.astype(bool)
            arr["truncated"][every, s] = truncated.astype(bool)
            self._write_frames(every, next_observations, self._episode_start)
            arr["flags"][every, s] |= VALID  # last: the transition exists once all of it is written
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
            _replace_header(self.directory, header)
        except BaseException:
            with self._lock:
                self._commits -= 1
            raise
        self._checksums, self._committed_w, self._stale = checksums, w, {}
        _fsync_dir(self.directory)
        return header

    def close(self, commit: bool = True) -> None:
        """Commit and release the files. Idempotent. ``commit=False`` releases them without a
        commit: the header keeps declaring what the last commit did, as after a crash (the
        training loop closes so when it stops on an exception, its checkpoint being older)."""
        if self._closed:
            return
        if self._writeback is not None:
            self._writeback.stop()
        if commit:
            self.commit()
        if self._obs_fd is not None:
            self._close_obs_fd()
            self._obs_fd = None
        with self._lock:
            self._closed = True
            self._arrays = {}
            self._cache = None

    @property
    def writebacks(self) -> int:
        """How many passes of the background writeback have written every file's dirty pages."""
        return 0 if self._writeback is None else self._writeback.count

    def __enter__(self) -> ReplayBuffer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ sampling

    def _scan_sampleable(self) -> np.ndarray:
        """Which slots start a sampleable transition, from the flags alone: (n_envs, S) bools.

        Frame ``a`` (slot ``a % S``) starts a sampleable transition iff its VALID flag is set, it is
        still present (``a >= oldest`` and ``a >= w - S``) and its next frame is written
        (``a + 1 <= w - 1``). Used on reopen; ``add`` keeps the same mask up to date as it writes
        (a slot's bit is cleared when its frame is overwritten and set with its VALID flag).
        """
        S = self.slots_per_env
        w = self._frames_written[:, None]
        a = self._slot_frames(np.arange(S, dtype=np.int64)[None, :], w)
        ok = (self._arrays["flags"] & VALID).astype(bool)
        ok &= a >= np.maximum(self._oldest, 0)[:, None]
        ok &= a + 1 <= w - 1
        return ok

    def _slot_frames(self, slots: np.ndarray, w: np.ndarray) -> np.ndarray:
        """The most recent absolute frame a slot holds, given its env's frames_written ``w``
        (negative if never written)."""
        return (w - 1) - np.mod(w - 1 - slots, self.slots_per_env)

    def _sampleable_flat(self) -> np.ndarray:
        """Flat (env * S + slot) indices of the sampleable slots, row-major, cached until the
        next add. Caller holds the lock."""
        if self._cache is None or self._cache[0] != self._version:
            self._cache = (self._version, np.flatnonzero(self._ok))
        return self._cache[1]

    def _sampleable(self) -> tuple[np.ndarray, np.ndarray]:
        """(env, absolute frame) of every transition that can be sampled now. Caller holds the lock."""
        return self._env_frames(self._sampleable_flat())

    def _env_frames(self, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        env, slot = np.divmod(flat, self.slots_per_env)
        return env, self._slot_frames(slot, self._frames_written[env])

    def __len__(self) -> int:
        with self._lock:
            if self._closed:
                return 0
            return int(np.count_nonzero(self._ok))

    @property
    def rng_state(self) -> dict[str, Any]:
        """State of the sampling Generator (saved in the header at commit, restored on reopen)."""
        with self._lock:
            return self.rng.bit_generator.state

    @rng_state.setter
    def rng_state(self, state: dict[str, Any]) -> None:
        with self._lock:
            self.rng.bit_generator.state = state

    def _draw(self, batch_size: int) -> tuple[np.ndarray, ...]:
        """Choose transitions uniformly among the sampleable ones. Caller holds the lock."""
        flat = self._sampleable_flat()
        if flat.size == 0:
            raise ValueError("cannot sample: the replay buffer holds no complete transition yet")
        pick = self.rng.integers(0, flat.size, size=batch_size)
        return self._locate(*self._env_frames(flat[pick]))

    def _horizon(self, env: np.ndarray, a: np.ndarray) -> np.ndarray:
        """Steps m (B,) in [1, n_step] of the n-step transitions starting at (env, a): transitions
        a, a+1, ... while they belong to a's episode and are complete. Caller holds the lock.

        Transition a+j continues the run iff frame a+j starts a transition (VALID: not an
        episode's final frame) and its next frame is written; a+j > a, so if a is still stored
        so is a+j.
        """
        m = np.ones(a.shape, np.int64)
        if self.n_step == 1:
            return m
        S = self.slots_per_env
        flags = self._arrays["flags"]
        last_complete = self._frames_written[env] - 2  # newest frame whose next frame is written
        going = np.ones(a.shape, bool)
        for j in range(1, self.n_step):
            f = a + j
            going &= f <= last_complete
            going &= (flags[env, f % S] & VALID).astype(bool)
            m += going
        return m

    def _locate(self, env: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, ...]:
        """Where the transitions (env, a) are. Caller holds the lock.

        Returns env (B,), a (B,), the observation stack's frames (B, k) oldest first, the next
        observation's stack (B, k) (frames up to a + m), m (B,) the steps it spans, and the
        lowest frame read (B,).
        """
        k = self.frame_stack
        m = self._horizon(env, a)
        if k == 1:
            return env, a, a[:, None], (a + m)[:, None], m, a.copy()
        S = self.slots_per_env
        # Clamp at the episode's first frame, or at the oldest frame of it still present when the
        # ring has overwritten its start: never into another episode or the write cursor.
        ep_start = self._arrays["episode_start_index"][env, a % S]
        lo = np.maximum.reduce([ep_start, self._oldest[env], self._frames_written[env] - S])
        offsets = np.arange(-(k - 1), 1, dtype=np.int64)
        stack = np.maximum(a[:, None] + offsets[None, :], lo[:, None])
        next_stack = np.maximum((a + m)[:, None] + offsets[None, :], lo[:, None])
        return env, a, stack, next_stack, m, stack[:, 0].copy()

    def transitions(self) -> tuple[np.ndarray, np.ndarray]:
        """(env, absolute frame) of every sampleable transition, e.g. to audit a buffer."""
        with self._lock:
            env, frames = self._sampleable()
            return env.copy(), frames.copy()

    def get(self, env: np.ndarray, frames: np.ndarray) -> dict[str, np.ndarray]:
        """The transitions starting at absolute ``frames`` of ``env``, laid out like ``sample``.

        Only meaningful for pairs returned by ``transitions()`` (no concurrent adds).
        """
        env, frames = np.asarray(env, np.int64), np.asarray(frames, np.int64)
        with self._lock:
            env, a, stack, next_stack, m, _ = self._locate(env, frames)
            return self._gather(env, a, stack, next_stack, m)

    def _small_fields(self, env: np.ndarray, a: np.ndarray, m: np.ndarray) -> dict[str, np.ndarray]:
        """Action, (n-step) reward and terminated (as float32) of the transitions starting at
        (env, a) and spanning m steps; with n_step > 1 also their discounts gamma**m."""
        arr = self._arrays
        S = self.slots_per_env
        actions = arr["actions"][env, a % S]
        if self.n_step == 1:
            return {"actions": actions, "rewards": arr["rewards"][env, a % S],
                    "terminated": arr["terminated"][env, a % S].astype(np.float32)}
        j = np.arange(self.n_step, dtype=np.int64)
        inside = j[None, :] < m[:, None]
        rewards = np.where(inside, arr["rewards"][env[:, None], (a[:, None] + j[None, :]) % S], 0.0)
        return {
            "actions": actions,
            "rewards": (rewards @ (self.gamma ** j.astype(np.float64))).astype(np.float32),
            "terminated": arr["terminated"][env, (a + m - 1) % S].astype(np.float32),
            "discounts": (self.gamma ** m.astype(np.float64)).astype(np.float32),
        }

    def _gather(self, env: np.ndarray, a: np.ndarray, stack: np.ndarray, next_stack: np.ndarray,
                m: np.ndarray) -> dict[str, np.ndarray]:
        S = self.slots_per_env
        k = self.frame_stack
        obs_mm = self._arrays["observations"]
        if k == 1:
            observations = obs_mm[env, a % S]
            next_observations = obs_mm[env, next_stack[:, 0] % S]
        elif self.n_step == 1:
            # One gather of the k+1 distinct frames serves both stacks: next = obs shifted by one.
            both = np.concatenate([stack, next_stack[:, -1:]], axis=1)
            frames = obs_mm[env[:, None], both % S]  # (B, k+1, *obs_shape)
            observations = self._stack_channels(frames[:, :k])
            next_observations = self._stack_channels(frames[:, 1:])
        else:
            observations = self._stack_channels(obs_mm[env[:, None], stack % S])
            next_observations = self._stack_channels(obs_mm[env[:, None], next_stack % S])
        return {"observations": observations, "next_observations": next_observations,
                **self._small_fields(env, a, m)}

    def _stack_channels(self, frames: np.ndarray) -> np.ndarray:
        """(B, k, *shape, C) -> (B, *shape, k*C): channel-last, oldest frame first."""
        B, k = frames.shape[:2]
        C = self.observation_shape[-1]
        # Move whole pixels (C values viewed as one void item) rather than single channels: the
        # transposing copy then moves C*itemsize bytes per element (~1.5x faster for RGB uint8).
        pixels = frames.view(np.dtype((np.void, C * frames.dtype.itemsize)))[..., 0]
        moved = np.ascontiguousarray(np.moveaxis(pixels, 1, -1))  # (B, *shape[:-1], k)
        return moved.view(frames.dtype).reshape(B, *self.observation_shape[:-1], k * C)

    def sample(self, batch_size: int) -> dict[str, np.ndarray]:
        """Uniformly sample ``batch_size`` transitions (with replacement) as numpy arrays.

        Safe while another thread adds: indices are chosen from a snapshot taken under the lock,
        frames are copied outside it, and any sample whose slots the writer reached meanwhile is
        drawn again (rare: it needs the writer to lap onto the oldest frames during one copy).
        """
        drawn = self.draw(batch_size)
        out = self.gather(drawn)
        self.repair(drawn, out)
        return out

    def draw(self, batch_size: int) -> tuple[np.ndarray, ...]:
        """Choose ``batch_size`` transitions with the seeded Generator; the first half of
        ``sample``. Call it from the thread that adds, in program order, so that the draws do
        not depend on thread timing; :meth:`gather` may then run in any thread, and
        :meth:`repair` in the drawing thread once it returned."""
        with self._lock:
            if self._closed:
                raise ValueError("sample on a closed ReplayBuffer")
            return self._draw(int(batch_size))

    def gather(self, drawn: tuple[np.ndarray, ...]) -> dict[str, np.ndarray]:
        """Copy the frames and fields of the transitions :meth:`draw` chose (``sample``'s batch
        layout); safe in any thread while another adds (rows it overwrote meanwhile are found
        and replaced by :meth:`repair`)."""
        env, a, stack, next_stack, m, _ = drawn
        return self._gather(env, a, stack, next_stack, m)

    def repair(self, drawn: tuple[np.ndarray, ...], out: dict[str, np.ndarray]) -> int:
        """Replace, in ``out`` (``gather(drawn)``) and ``drawn``, every transition whose slots the
        writer has reached since it was drawn, with transitions drawn again; returns how many.

        Whether a row is replaced depends only on the adds made before this call, not on when
        the gather ran: called from the thread that adds, the result is the same whatever the
        thread timing."""
        env, lowest = drawn[0], drawn[5]
        replaced = 0
        while True:
            with self._lock:
                torn = np.flatnonzero(lowest + self.slots_per_env < self._frames_written[env])
                if torn.size == 0:
                    return replaced
                env2, a2, stack2, next2, m2, lowest2 = self._draw(torn.size)
            redo = self._gather(env2, a2, stack2, next2, m2)
            for key in out:
                out[key][torn] = redo[key]
            env[torn], lowest[torn] = env2, lowest2
            replaced += int(torn.size)

    def sample_indices(self, batch_size: int) -> dict[str, np.ndarray]:
        """Like ``sample`` but without the frames: where they are, for a copy of the frames kept
        elsewhere (``DeviceMirror`` gathers them on the accelerator).

        Returns ``env`` (B,), ``obs_slots`` and ``next_slots`` (B, k) slot indices of the
        observation and next-observation stacks (oldest frame first), and the small fields
        ``actions``, ``rewards``, ``terminated`` (and ``discounts``) as ``sample`` gives them.
        Draws from the same seeded Generator as ``sample``. The frames at those slots are valid as long as no ``add``
        happens in between (the caller samples and reads in the thread that adds).
        """
        with self._lock:
            if self._closed:
                raise ValueError("sample on a closed ReplayBuffer")
            env, a, stack, next_stack, m, _ = self._draw(int(batch_size))
            S = self.slots_per_env
            return {
                "env": env.astype(np.int32),
                "obs_slots": (stack % S).astype(np.int32),
                "next_slots": (next_stack % S).astype(np.int32),
                **self._small_fields(env, a, m),
            }

    def track_writes(self, enabled: bool = True) -> None:
        """Start (or stop) logging the (env, slot) of every frame written, for ``take_writes``."""
        with self._lock:
            self._written = [] if enabled else None

    def take_writes(self) -> tuple[np.ndarray, np.ndarray]:
        """(env, slot) of the frames written since the last call (in write order), and clear."""
        with self._lock:
            if self._written is None:
                raise ValueError("take_writes: call track_writes() first")
            pairs, self._written = self._written, []
        if not pairs:
            return np.zeros(0, np.int32), np.zeros(0, np.int32)
        arr = np.concatenate(pairs).astype(np.int32)
        return arr[:, 0], arr[:, 1]

    def frames_at(self, env: np.ndarray, slots: np.ndarray) -> np.ndarray:
        """The stored frames at (env, slot) pairs, as one array (a copy)."""
        with self._lock:
            return self._arrays["observations"][np.asarray(env), np.asarray(slots)]

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


class _Writeback:
    """Writes the buffer files' dirty pages to disk every ``interval_s`` seconds (``os.fsync`` on a
    descriptor of each file, which writes a shared mapping's dirty pages and releases the GIL), in
    a daemon thread, whenever something was added since the last time (``version()`` changed).

    Without it, what the loop wrote since the last commit stays in the page cache until the
    kernel's own writeback (30 s by default, or a dirty-memory threshold), so ``commit``'s flush
    writes it all at once while the loop waits: at 256x256 a checkpoint every 25K env steps
    flushes ~4.9 GB of frames. Durability is unchanged: only ``commit`` declares data in the
    header, after its own flush."""

    def __init__(self, paths: list[Path], interval_s: float, version: Any) -> None:
        self._fds = [os.open(p, os.O_RDONLY) for p in paths]
        self._interval = interval_s
        self._version = version
        self._stopped = threading.Event()
        self.count = 0
        self._thread = threading.Thread(target=self._run, name=f"replay-writeback {paths[0].parent}",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            seen = self._version()
            while not self._stopped.wait(self._interval):
                now = self._version()
                if now is None:
                    return  # the buffer was dropped without close()
                if now == seen:
                    continue
                seen = now
                synced = 0
                for fd in self._fds:
                    if self._stopped.is_set():
                        return
                    try:
                        os.fsync(fd)
                        synced += 1
                    except OSError:
                        pass  # commit's own flush reports a failing disk; this is only a head start
                if synced == len(self._fds):
                    self.count += 1
        finally:
            for fd in self._fds:
                os.close(fd)

    def stop(self) -> None:
        """Stop the thread (after the fsync it is in, if any); it closes the descriptors."""
        self._stopped.set()
        self._thread.join()
