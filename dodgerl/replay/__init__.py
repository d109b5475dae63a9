"""On-disk replay: a crash-safe memmapped buffer (frames stored once), a device prefetcher and a
device-resident mirror of the frames.

``DeviceSampler`` and ``DeviceMirror`` are imported lazily so that processes which only write the buffer (collectors,
tests' child writers) do not pay for importing JAX.
"""

from typing import Any

from dodgerl.replay.buffer import (
    CONFIG_KEYS,
    FRESH_REPLAY_HINT,
    DiskSpaceWarning,
    ReplayBuffer,
    ReplayCorruptError,
    ReplayError,
    ReplayMismatchError,
    read_header,
    required_bytes,
    rewind_check,
    rewind_header,
)

__all__ = ["ReplayBuffer", "ReplayError", "ReplayMismatchError", "ReplayCorruptError",
           "DiskSpaceWarning", "CONFIG_KEYS", "FRESH_REPLAY_HINT", "DeviceSampler", "DeviceMirror",
           "gather_batch", "read_header", "required_bytes", "rewind_check", "rewind_header"]


def __getattr__(name: str) -> Any:
    if name == "DeviceSampler":
        from dodgerl.replay.sampler import DeviceSampler

        return DeviceSampler
    if name in ("DeviceMirror", "gather_batch"):
        from dodgerl.replay import mirror

        return getattr(mirror, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
