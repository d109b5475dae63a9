"""Per-chunk CRC32s of a replay buffer's committed data: computed for a commit, verified on
reopen, and hashed ahead of the commit by a background thread.

A chunk is ``chunk_slots`` consecutive slots of one env in one file. Its CRC32 covers the slots
holding a committed frame, without the transition fields (``TRANSITION_FIELDS``) of the env's
newest frame: the add after the commit writes those. A chunk is *finished* once every slot of it
holds a frame and the newest frame is elsewhere: its CRC32 no longer depends on how many frames
are written, and stays the same until the writer comes back to one of its slots. The background
pass hashes finished chunks; every write to a chunk bumps its write generation (``note_writes``,
under the buffer's lock), and a CRC32 computed ahead is used only while the generation it read
is still the chunk's. A commit computes what is left: chunks not finished, and chunks finished
or written since the pass that last saw them.
"""

from __future__ import annotations

import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dodgerl.replay.errors import ReplayCorruptError
from dodgerl.replay.layout import HEADER_NAME

_CHUNK_BYTES = 4 << 20  # a checksum covers at most about this many bytes of frames per env
_SMALL_CHUNK_SLOTS = 1024  # slots per chunk of every file but observations.npy
HASH_INTERVAL_S = 0.25
"""Longest pause between two background passes (shorter if the writeback interval is): what a
commit hashes itself is at most what was finished during one pause, plus one chunk per env."""

CHECKED_FIELDS = ("observations", "frame_index", "episode_start_index")
"""Fields of a slot written with its frame, fixed once it is committed."""
TRANSITION_FIELDS = ("actions", "rewards", "terminated", "truncated", "flags")
"""Fields of a slot that the add after the one writing its frame may still change (the
transition starting there, its VALID bit): not checksummed for an env's newest frame."""


def chunk_slots(observation_shape: tuple[int, ...], observation_dtype: Any, slots_per_env: int) -> int:
    """Slots per checksum chunk: as many as hold about ``_CHUNK_BYTES`` of frames (at least 1,
    at most a whole sub-ring). A commit re-reads at most one partial chunk per env beyond what
    it adds."""
    frame = int(np.prod(observation_shape, dtype=np.int64)) * np.dtype(observation_dtype).itemsize
    return max(1, min(int(slots_per_env), _CHUNK_BYTES // max(frame, 1)))


class ChunkChecksums:
    """The checksums of one open buffer: those of its last commit, the chunks a reopen found out
    of date, each chunk's write generation and the CRC32s computed ahead of the next commit.

    ``arrays`` are the buffer's mapped files, ``frames_written`` its counters (the array add
    updates in place); ``lock`` is the buffer's lock, held by every add (``note_writes`` is
    called under it). ``commit_table``, ``verify`` and ``committed`` run in
    the thread that adds; ``hash_ahead`` in any other."""

    def __init__(self, arrays: dict[str, np.ndarray], frames_written: np.ndarray, slots_per_env: int,
                 observations_chunk: int, lock: threading.Lock) -> None:
        self._arrays = arrays
        self._frames_written = frames_written  # the buffer's counters, updated in place by add
        self._lock = lock
        self.slots_per_env = S = int(slots_per_env)
        self.n_envs = n = next(iter(arrays.values())).shape[0]
        self.chunk = {name: observations_chunk if name == "observations" else min(S, _SMALL_CHUNK_SLOTS)
                      for name in arrays}
        self.n_chunks = {name: -(-S // C) for name, C in self.chunk.items()}
        # One generation array per chunk size (two at most), bumped by every write to a chunk.
        self._generation = {C: np.zeros((n, -(-S // C)), np.int64) for C in set(self.chunk.values())}
        # CRC32 computed ahead per chunk, and the generation it read (-1: none).
        self._ahead = {name: (np.zeros((n, k), np.int64), np.full((n, k), -1, np.int64))
                       for name, k in self.n_chunks.items()}
        self.hashed_ahead = 0  # chunks a commit took from the background pass
        self.table: dict[str, Any] | None = None  # the last commit's checksums (header format)
        self.committed_w: np.ndarray | None = None  # the frames_written it declared
        self.stale: dict[str, list[set[int]]] = {}  # chunks whose stored CRC32 is out of date

    def release(self) -> None:
        """Drop the references to the buffer's mapped files (it is closed)."""
        self._arrays = {}

    # ------------------------------------------------------------------ one chunk

    def _bounds(self, name: str, c: int) -> tuple[int, int]:
        C = self.chunk[name]
        return c * C, min((c + 1) * C, self.slots_per_env)

    def chunk_crc(self, name: str, e: int, c: int, w: int) -> int:
        """CRC32 of chunk ``c`` of env ``e``'s slots in file ``name``, over the slots a commit
        declaring ``w`` frames written holds committed data in: the slots written, without the
        transition fields of the newest frame (the next add writes them)."""
        lo, hi = self._bounds(name, c)
        hi = min(hi, w)
        if hi <= lo:
            return 0
        row = self._arrays[name][e]
        newest = (w - 1) % self.slots_per_env
        if name in TRANSITION_FIELDS and lo <= newest < hi:
            return zlib.crc32(row[newest + 1:hi], zlib.crc32(row[lo:newest]))
        return zlib.crc32(row[lo:hi])

    def _finished(self, name: str, w: np.ndarray) -> np.ndarray:
        """(n_envs, n_chunks) bools: which chunks are finished for frames_written ``w``."""
        C = self.chunk[name]
        lo = np.arange(self.n_chunks[name], dtype=np.int64) * C
        hi = np.minimum(lo + C, self.slots_per_env)
        newest = ((w - 1) % self.slots_per_env)[:, None]
        return (w[:, None] >= hi[None, :]) & ~((newest >= lo[None, :]) & (newest < hi[None, :]))

    def note_writes(self, env: np.ndarray, slots: np.ndarray) -> None:
        """Slots ``slots`` of ``env`` (distinct envs) are being written. Caller holds the lock."""
        for C, generation in self._generation.items():
            generation[env, slots // C] += 1

    # ------------------------------------------------------------------ the commit's checksums

    def full(self, w: np.ndarray) -> dict[str, Any]:
        """Every chunk's CRC32, computed from the files for frames_written ``w``."""
        return {name: {"chunk_slots": self.chunk[name],
                       "crc32": [[self.chunk_crc(name, e, c, int(w[e])) for c in range(self.n_chunks[name])]
                                 for e in range(self.n_envs)]}
                for name in self._arrays}

    def _chunks_of(self, name: str, slots: np.ndarray) -> set[int]:
        return set((np.asarray(slots) // self.chunk[name]).tolist())

    def _dirty(self, name: str, e: int, w: int) -> set[int]:
        """Chunks of env ``e`` in ``name`` whose CRC32 the last commit's table does not give for
        ``w``: those written since (its newest frame's slot on: the add after it wrote that
        slot's transition) and the stale ones."""
        if self.table is None or self.committed_w is None:
            return set(range(self.n_chunks[name]))
        S = self.slots_per_env
        dirty = set(self.stale.get(name, [set()] * self.n_envs)[e])
        prev = int(self.committed_w[e])
        if w > prev:
            first = max(prev - 1, 0)
            dirty |= (set(range(self.n_chunks[name])) if w - first >= S else
                      self._chunks_of(name, np.arange(first, w) % S))
        return dirty

    def commit_table(self, w: np.ndarray) -> dict[str, Any]:
        """The checksums for a commit declaring ``w`` (nothing is being written): the last
        commit's, with every dirty chunk taken from the background pass where it hashed the
        chunk as it is now, computed here otherwise. Equal to ``full(w)``."""
        with self._lock:
            generation = {C: g.copy() for C, g in self._generation.items()}
            ahead = {name: (crc.copy(), seen.copy()) for name, (crc, seen) in self._ahead.items()}
        out = {}
        for name in self._arrays:
            C = self.chunk[name]
            crc, seen = ahead[name]
            usable = (seen == generation[C]) & self._finished(name, w)
            rows = []
            for e in range(self.n_envs):
                row = ([0] * self.n_chunks[name] if self.table is None
                       else list(self.table[name]["crc32"][e]))
                for c in self._dirty(name, e, int(w[e])):
                    if usable[e, c]:
                        row[c] = int(crc[e, c])
                        self.hashed_ahead += 1
                    else:
                        row[c] = self.chunk_crc(name, e, c, int(w[e]))
                rows.append(row)
            out[name] = {"chunk_slots": C, "crc32": rows}
        return out

    def committed(self, table: dict[str, Any], w: np.ndarray) -> None:
        """``table`` for frames_written ``w`` is now the header's."""
        self.table, self.committed_w, self.stale = table, w.copy(), {}

    # ------------------------------------------------------------------ ahead of the commit

    def hash_ahead(self, stopped: threading.Event) -> int:
        """Hash every finished chunk not hashed as it is now; returns how many were kept (a
        chunk written while it was read is dropped, and hashed again by a later pass)."""
        with self._lock:
            w = self._frames_written.copy()
            generation = {C: g.copy() for C, g in self._generation.items()}
            todo = [(name, e, c, int(generation[self.chunk[name]][e, c]))
                    for name in self._arrays
                    for e, c in np.argwhere(self._finished(name, w)
                                            & (self._ahead[name][1] != generation[self.chunk[name]]))]
        kept = 0
        for name, e, c, read in todo:
            if stopped.is_set():
                break
            lo, hi = self._bounds(name, c)
            crc = zlib.crc32(self._arrays[name][e, lo:hi])  # releases the GIL on large chunks
            with self._lock:
                if self._generation[self.chunk[name]][e, c] == read:
                    self._ahead[name][0][e, c] = crc
                    self._ahead[name][1][e, c] = read
                    kept += 1
        return kept

    # ------------------------------------------------------------------ reopen

    def verify(self, header: dict[str, Any], w: np.ndarray, overwritten: list[np.ndarray],
               directory: Path) -> None:
        """Check every chunk's CRC32 against ``header`` (frames_written ``w``), except chunks
        holding slots that writes after the commit may have overwritten (``overwritten``: those
        of frames before the oldest kept; they are recomputed at the next commit).
        A header without checksums (written before they existed) is taken as it is."""
        self.committed_w = w.copy()
        stored = header.get("checksums")
        if not isinstance(stored, dict) or set(stored) != set(self._arrays):
            return
        for name, table in stored.items():
            rows = table.get("crc32") if isinstance(table, dict) else None
            if (not isinstance(rows, list) or table.get("chunk_slots") != self.chunk[name]
                    or len(rows) != self.n_envs
                    or any(not isinstance(row, list) or len(row) != self.n_chunks[name]
                           or not all(isinstance(x, int) for x in row) for row in rows)):
                raise ReplayCorruptError(directory / HEADER_NAME,
                                         f"'checksums' of {name} do not fit the buffer")
        self.stale = {name: [self._chunks_of(name, overwritten[e]) for e in range(self.n_envs)]
                      for name in stored}
        for e in range(self.n_envs):
            for name, table in stored.items():
                for c, expected in enumerate(table["crc32"][e]):
                    if c not in self.stale[name][e]:
                        self._check(name, e, c, int(w[e]), expected, directory)
        self.table = stored

    def _check(self, name: str, e: int, c: int, w: int, expected: int, directory: Path) -> None:
        got = self.chunk_crc(name, e, c, w)
        if got != expected:
            lo, hi = self._bounds(name, c)
            raise ReplayCorruptError(
                directory / f"{name}.npy",
                f"env {e} slots {lo}..{min(hi, w) - 1} fail their checksum (CRC32 {got:#010x}, "
                f"header.json recorded {expected:#010x} at commit): the data changed "
                "after it was committed")


class BackgroundHasher:
    """Runs ``ChunkChecksums.hash_ahead`` in a daemon thread every ``interval_s`` seconds while
    something was added since the last pass (``version()`` changed; None: the buffer is gone).

    ``zlib.crc32`` releases the GIL on large buffers, so the adding thread runs meanwhile (on
    another core where there is one). ``cpu_s`` is the thread's CPU time, ``kept`` the chunks it
    hashed that were not written while it read them."""

    def __init__(self, checksums: ChunkChecksums, interval_s: float, version: Callable[[], int | None],
                 name: str) -> None:
        self._checksums = checksums
        self._interval = interval_s
        self._version = version
        self._stopped = threading.Event()
        self.cpu_s = 0.0
        self.kept = 0
        self._thread = threading.Thread(target=self._run, name=f"replay-checksums {name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        seen = self._version()
        while not self._stopped.wait(self._interval):
            now = self._version()
            if now is None:
                return
            if now == seen:
                continue
            seen = now
            t0 = time.thread_time()
            self.kept += self._checksums.hash_ahead(self._stopped)
            self.cpu_s += time.thread_time() - t0

    def stop(self) -> None:
        """Stop the thread (after the chunk it is hashing, if any)."""
        self._stopped.set()
        self._thread.join()
