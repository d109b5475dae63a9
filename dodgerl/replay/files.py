"""The data files of a replay directory: the free-space check before they are created, creating
and preallocating them, and mapping existing ones after checking them against the header."""

from __future__ import annotations

import errno
import os
import shutil
import warnings
from pathlib import Path

import numpy as np

from dodgerl.replay.errors import DiskSpaceWarning, ReplayCorruptError

DISK_MARGIN_BYTES = 64 << 20  # free space kept beyond the buffer itself (headers, logs, fs slack)


def open_field(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> np.memmap:
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



def create_fields(directory: Path, specs: dict[str, tuple[tuple[int, ...], np.dtype]],
                  preallocate: bool, made: list[Path]) -> dict[str, np.memmap]:
    """Create and map a .npy file of each spec in ``directory``; each path is appended to ``made``
    before its file is created (the caller removes them if creating the buffer fails)."""
    arrays: dict[str, np.memmap] = {}
    for name, (shape, dtype) in specs.items():
        path = directory / f"{name}.npy"
        made.append(path)
        arr = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
        if preallocate:
            # Reserve every block now: a full disk fails here with ENOSPC/EFBIG instead
            # of a SIGBUS on some later page fault in the middle of training.
            with open(path, "r+b") as f:
                os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        arrays[name] = arr
    return arrays


def check_free_space(directory: Path, need: int, extra_bytes: int, what: str) -> None:
    """Raise ENOSPC (before anything is written) when the disk under ``directory`` cannot hold
    ``need`` bytes plus a margin; warn with a DiskSpaceWarning when it cannot also hold
    ``extra_bytes`` (the run's checkpoints). ``what`` describes the buffer's settings."""
    free = shutil.disk_usage(existing_ancestor(directory)).free
    if need + DISK_MARGIN_BYTES > free:
        raise OSError(
            errno.ENOSPC,
            f"replay buffer at {directory} needs {fmt_bytes(need)} ({what}) "
            f"plus a {fmt_bytes(DISK_MARGIN_BYTES)} margin, but only {fmt_bytes(free)} "
            "are free; nothing was written")
    if extra_bytes > 0 and need + extra_bytes + DISK_MARGIN_BYTES > free:
        warnings.warn(DiskSpaceWarning(
            f"the disk will fill during the run: the replay buffer at {directory} needs "
            f"{fmt_bytes(need)} and the run's checkpoints (kept + best/) "
            f"{fmt_bytes(extra_bytes)}, plus a {fmt_bytes(DISK_MARGIN_BYTES)} margin, but "
            f"only {fmt_bytes(free)} are free; free space, or lower replay.buffer_size or "
            "train.keep_checkpoints"), stacklevel=4)


def discard(directory: Path) -> Path:
    """Move ``directory`` to ``<directory>.discarded-<n>`` (the first free n); returns where it went."""
    if not directory.exists():
        raise FileNotFoundError(errno.ENOENT, "no replay directory to discard", str(directory))
    n = 1
    while (target := directory.with_name(f"{directory.name}.discarded-{n}")).exists():
        n += 1
    os.replace(directory, target)
    fsync_dir(directory.parent)
    return target


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def fmt_bytes(n: int) -> str:
    return f"{n:,} bytes ({n / 2**30:.2f} GiB)"
