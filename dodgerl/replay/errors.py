"""The errors and warnings of the replay buffer, and the configuration keys their messages name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

FRESH_REPLAY_HINT = "resume with --fresh-replay to drop the buffer and keep the agent"
"""What every damaged- or mismatched-replay error tells the user to do."""

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
