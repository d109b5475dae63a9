"""What a replay directory holds: its header's name and format, the slot flags, and the shape and
dtype of every data file (one place, used by create, reopen and the size checks)."""

from __future__ import annotations

from typing import Any

import numpy as np

FORMAT_NAME = "dodgerl-replay"
FORMAT_VERSION = 1
HEADER_NAME = "header.json"

VALID = np.uint8(1)  # a transition starts at this slot: action/reward stored, next frame written
START = np.uint8(2)  # this slot holds the first frame of an episode


def field_specs(
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


def npy_bytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    """Size of a .npy file with this shape (data + a generous 4 KiB for the format header)."""
    return int(np.prod(shape, dtype=np.int64)) * dtype.itemsize + 4096


def required_bytes(
    capacity: int, observation_shape: tuple[int, ...], observation_dtype: Any = np.uint8,
    action_dim: int = 2, n_envs: int = 1,
) -> int:
    """Bytes on disk a buffer with these settings needs (all files, preallocated)."""
    slots = capacity // n_envs
    specs = field_specs(n_envs, slots, tuple(observation_shape), np.dtype(observation_dtype),
                        action_dim)
    return sum(npy_bytes(s, d) for s, d in specs.values()) + 64 * 1024
