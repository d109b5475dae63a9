"""header.json: read and validated, replaced atomically, and set back to an earlier commit's
(``rewind_check`` / ``rewind_header``)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from dodgerl.replay.errors import (
    CONFIG_KEYS,
    FRESH_REPLAY_HINT,
    ReplayCorruptError,
    ReplayMismatchError,
)
from dodgerl.replay.files import fsync_dir
from dodgerl.replay.layout import FORMAT_NAME, FORMAT_VERSION, HEADER_NAME

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
    replace_header(directory, header)
    fsync_dir(directory)
    return dropped


def replace_header(directory: Path, header: dict[str, Any]) -> None:
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


def check_settings(directory: Path, header: dict[str, Any], wanted: dict[str, Any],
                   files: dict[str, Any], slots_per_env: int) -> None:
    """Raise ReplayMismatchError naming the config key of the first of ``wanted`` (the buffer's
    settings: capacity, n_envs, ...) that ``header`` disagrees with; ReplayCorruptError when its
    ``files`` or ``slots_per_env`` disagree with those settings."""
    for field, value in wanted.items():
        if header.get(field) != value:
            key = CONFIG_KEYS[field]
            raise ReplayMismatchError(
                f"{key}: the replay at {directory} was written with {header.get(field)}, "
                f"the config now says {value} (the buffer's {field}); nothing was changed: "
                f"resume with the settings it was written with, or {FRESH_REPLAY_HINT}",
                key=key, field=field, written=header.get(field), requested=value)
    if header["files"] != files or header["slots_per_env"] != slots_per_env:
        raise ReplayCorruptError(directory / HEADER_NAME, "its 'files' or 'slots_per_env' disagree "
                                                          "with its capacity, n_envs and observation settings")
