"""Orbax checkpoints of a run: the latest N under ``checkpoints/<step>/``, the best under ``best/``.

Each checkpoint holds two items: ``agent`` (the SAC agent pytree: params, targets, optimiser
states, temperature) and ``meta`` (JSON: counters, RNG states, logs position). Orbax writes a
checkpoint into a temporary directory and renames it when complete, so a save interrupted at any
instant leaves either the whole checkpoint or a temporary directory that is never listed.

Once Orbax has committed a checkpoint, ``dodgerl_manifest.json`` is written into it: the size
and CRC32 of every file. A restore verifies the files against it before Orbax reads them (a
checkpoint saved before manifests existed, or killed between Orbax's commit and the manifest, is
restored unverified) and checks that the restored floating-point arrays are finite. A directory
that looks complete but cannot be restored, fails its manifest or holds non-finite values is
reported, and the previous checkpoint is used instead; :func:`set_aside_broken` and
``RunCheckpoints.save`` move such directories out of the way of later saves.

Importing this module installs a filter for the noise Orbax makes on a failed read or write
(see :func:`_is_orbax_noise`): one line of error is reported, not hundreds of tracebacks.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
import warnings
import weakref
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
BEST_DIR = "best"
_ITEMS = ("agent", "meta")
WHICH = ("best", "latest")
"""What ``find_checkpoint`` takes from a run directory: its kept best policy or its latest checkpoint."""


MANIFEST_NAME = "dodgerl_manifest.json"
MANIFEST_FORMAT = "dodgerl-checkpoint-manifest"
ABANDONED_DIR = "abandoned"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or corrupt."""


def _is_orbax_noise(exc: BaseException | None) -> bool:
    """Whether ``exc`` is a duplicate of a failure Orbax already raised to its caller: a
    TensorStore read or write finishing after Orbax's event loop was closed (Orbax stops at the
    first failed array and closes its loop; each array still in flight then reports "Event loop
    is closed" from ``call_soon_threadsafe``), or the unretrieved exception of such a sibling."""
    if exc is None:
        return False
    if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
        tb = exc.__traceback__
        while tb is not None:
            if tb.tb_frame.f_code.co_name == "call_soon_threadsafe":
                return True
            tb = tb.tb_next
        return False
    tb = exc.__traceback__
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if f"{os.sep}orbax{os.sep}" in filename or f"{os.sep}tensorstore{os.sep}" in filename:
            return True
        tb = tb.tb_next
    return False


class _OrbaxNoiseFilter(logging.Filter):
    """Drops asyncio's "Future/Task exception was never retrieved" records of Orbax's siblings."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        if "exception was never retrieved" not in message or not record.exc_info:
            return True
        return not _is_orbax_noise(record.exc_info[1])


def _install_noise_filters() -> None:
    if getattr(sys.unraisablehook, "_dodgerl_orbax_filter", False):
        return
    previous = sys.unraisablehook

    def unraisablehook(unraisable: Any) -> None:
        if _is_orbax_noise(unraisable.exc_value):
            return
        previous(unraisable)

    unraisablehook._dodgerl_orbax_filter = True  # type: ignore[attr-defined]
    sys.unraisablehook = unraisablehook
    logging.getLogger("asyncio").addFilter(_OrbaxNoiseFilter())


_install_noise_filters()


def _short(err: BaseException) -> str:
    """The first line of an error, cut at 300 characters (TensorStore's run to dozens of lines)."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text[:300]}{'...' if len(text) > 300 else ''}"


def _file_crc(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            crc = zlib.crc32(chunk, crc)
    return crc


def write_manifest(step_dir: str | Path) -> Path:
    """Record the size and CRC32 of every file of the committed checkpoint ``step_dir`` in its
    ``dodgerl_manifest.json`` (written to a temporary name, fsynced, renamed)."""
    step_dir = Path(step_dir)
    files = {}
    for path in sorted(step_dir.rglob("*")):
        if path.is_file() and path.name not in (MANIFEST_NAME, MANIFEST_NAME + ".tmp"):
            files[path.relative_to(step_dir).as_posix()] = {"size": path.stat().st_size,
                                                           "crc32": _file_crc(path)}
    tmp = step_dir / (MANIFEST_NAME + ".tmp")
    with open(tmp, "w") as f:
        json.dump({"format": MANIFEST_FORMAT, "version": 1, "files": files}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, step_dir / MANIFEST_NAME)
    return step_dir / MANIFEST_NAME


def verify_manifest(step_dir: str | Path) -> bool:
    """Check every file of ``step_dir`` against its manifest; raise CheckpointError naming the
    first file that is missing, of another size or fails its CRC32. Returns False (nothing
    checked) when the checkpoint has no manifest."""
    step_dir = Path(step_dir)
    path = step_dir / MANIFEST_NAME
    if not path.is_file():
        return False
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
        if manifest.get("format") != MANIFEST_FORMAT or not isinstance(files, dict):
            raise ValueError("not a dodgerl checkpoint manifest")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: unreadable manifest ({_short(err)})") from None
    for rel, entry in files.items():
        file = step_dir / rel
        if not file.is_file():
            raise CheckpointError(f"{step_dir}: {rel} is missing (listed in {MANIFEST_NAME})")
        size = file.stat().st_size
        if size != entry.get("size"):
            raise CheckpointError(f"{step_dir}: {rel} is {size:,} bytes, {entry.get('size'):,} at save")
        if _file_crc(file) != entry.get("crc32"):
            raise CheckpointError(f"{step_dir}: {rel} fails its checksum (changed after the save)")
    return True


def check_finite(tree: Any, where: str | Path) -> None:
    """Raise CheckpointError naming the first floating-point array of ``tree`` that holds a NaN
    or an infinity."""
    import jax

    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        array = np.asarray(leaf)
        if np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.complexfloating):
            bad = array.size - int(np.count_nonzero(np.isfinite(array)))
            if bad:
                raise CheckpointError(
                    f"{where}: restored {jax.tree_util.keystr(path)} holds {bad:,} values that "
                    f"are not finite (of {array.size:,})")


def _manager(directory: Path, keep: int, asynchronous: bool = False) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=asynchronous
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ocp.CheckpointManager(directory.absolute(), options=options, item_names=_ITEMS)


def _save_args(agent: Any, meta: dict[str, Any]) -> ocp.args.Composite:
    return ocp.args.Composite(agent=ocp.args.StandardSave(agent), meta=ocp.args.JsonSave(meta))


_SAVING = threading.Lock()
"""Held while a save waits for every other save in flight and then starts: Orbax numbers its
operations process-wide and signals their steps by that number, so two managers' saves in
flight at once (several runs in one process: ``dodgerl.train.group``) can wait forever for a
signal of the other's. One save in flight in the process at a time."""
_OPEN: weakref.WeakSet = weakref.WeakSet()


def _wait_for_every_save() -> None:
    for checkpoints in list(_OPEN):
        checkpoints._best.wait_until_finished()
        checkpoints._latest.wait_until_finished()


class RunCheckpoints:
    """Latest-N and best checkpoints of one run directory."""

    def __init__(self, run_dir: str | Path, keep: int) -> None:
        run_dir = Path(run_dir)
        self.latest_dir = run_dir / CHECKPOINTS_DIR
        self.best_dir = run_dir / BEST_DIR
        # Latest checkpoints are written in Orbax's background thread when ``save`` is asked not
        # to wait (the training loop's periodic checkpoints): the next save and close wait for it.
        self._latest = _manager(self.latest_dir, keep, asynchronous=True)
        # best/ is written in Orbax's background thread (it is saved mid-run, after evaluations):
        # the next save_best, every save of the latest checkpoints, and close wait for it, so a
        # checkpoint's best_eval never names a best/ that has not landed. Orbax copies the arrays
        # to the host before save returns (its default), so a later update may donate them. Like
        # every Orbax save it lands under a temporary name first: an interrupted one is never
        # taken for complete.
        self._best = _manager(self.best_dir, 1, asynchronous=True)
        self._run_dir = run_dir
        self._unsealed: list[Path] = []  # saved by Orbax, no manifest yet (written once committed)
        _OPEN.add(self)

    def _seal(self) -> None:
        """Write the manifest of every checkpoint this object saved that Orbax has committed
        since (its saves having been waited for)."""
        pending, self._unsealed = self._unsealed, []
        for step_dir in pending:
            if _is_complete(step_dir):
                write_manifest(step_dir)
            elif step_dir.exists():
                self._unsealed.append(step_dir)  # (still in flight)

    def _clear_broken(self, step: int) -> None:
        """Move a directory of ``step`` that cannot be restored (no metadata, failing manifest)
        to ``abandoned/``, and make Orbax forget it, so that this save is not skipped."""
        step_dir = self.latest_dir / str(step)
        if not step_dir.exists():
            return
        if _is_complete(step_dir):
            try:
                verify_manifest(step_dir)
                return
            except CheckpointError as err:
                reason = str(err)
        else:
            reason = f"{step_dir}: incomplete (no {'_CHECKPOINT_METADATA' if step_dir.is_dir() else 'directory'})"
        target = _move_aside(step_dir, abandoned_dir(self._run_dir, f"broken-checkpoint-{step}"))
        log.warning("moved the checkpoint that cannot be restored aside to %s: %s", target, reason)
        self._latest.reload()

    def save(self, step: int, agent: Any, meta: dict[str, Any], wait: bool = True) -> Path:
        """Save the latest checkpoint of ``step`` (kept: the newest ``keep``). ``wait=False``
        returns once Orbax has copied the arrays to the host (its default; so the caller may
        donate them to the next update at once) and writes them in its background thread: the
        checkpoint is complete (listed) when the next ``save`` or ``close`` returns;
        until then it is a temporary directory, as after a kill."""
        with _SAVING:
            _wait_for_every_save()
            self._seal()
            self._clear_broken(step)
            if step not in self._latest.all_steps():
                self._latest.save(step, args=_save_args(agent, meta), force=True)
                self._unsealed.append(self.latest_dir / str(step))
                if wait:
                    self._latest.wait_until_finished()
                    self._seal()
        return self.latest_dir / str(step)

    def save_best(self, step: int, agent: Any, meta: dict[str, Any]) -> Path:
        """Save ``agent`` as the best policy (one is kept). A best/ of the same step, saved before
        a resume by an evaluation that scored less (the resumed run evaluates that step again),
        is replaced."""
        with _SAVING:
            _wait_for_every_save()
            self._seal()
            if step in self._best.all_steps():
                self._best.delete(step)
            self._best.save(step, args=_save_args(agent, meta), force=True)
            self._unsealed.append(self.best_dir / str(step))
        return self.best_dir / str(step)

    def check_for_errors(self) -> None:
        """Raise the error of a background save that has failed, if any, without waiting for a
        save in progress (the training loop calls it at every progress row, so a failing disk
        stops the run within ``log_freq`` env steps, not at the next checkpoint)."""
        self._latest.check_for_errors()
        self._best.check_for_errors()

    def close(self) -> None:
        """Wait for the saves in flight, write their manifests and release Orbax's managers
        (re-raising a failed background save)."""
        with _SAVING:
            _OPEN.discard(self)
            try:
                self._latest.close()  # re-raises a failed background save
            finally:
                self._best.close()
            self._seal()


def _is_complete(step_dir: Path) -> bool:
    return (
        step_dir.is_dir()
        and step_dir.name.isdigit()
        and (step_dir / "_CHECKPOINT_METADATA").is_file()
        and all((step_dir / item).is_dir() for item in _ITEMS)
    )


def complete_checkpoints(directory: str | Path) -> list[Path]:
    """Complete step directories under ``directory``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    steps = [p for p in directory.iterdir() if _is_complete(p)]
    return sorted(steps, key=lambda p: int(p.name))


def set_aside_after(run_dir: str | Path, step: int, destination: str | Path) -> list[Path]:
    """Move the complete latest checkpoints of ``run_dir`` (``checkpoints/<n>``) saved after
    ``step`` to ``destination/checkpoints/<n>``; returns their new paths.

    A run resumed from an earlier checkpoint than its last continues from there: what the
    abandoned continuation saved later is kept, but out of the run's way (else a later resume
    would take the abandoned checkpoint for the newest, and the resumed run could not save its
    own at those steps). ``best/`` is left in place: it holds the best policy found in the run
    directory, and the resumed run replaces it only with a better one.
    """
    run_dir, destination = Path(run_dir), Path(destination)
    moved = []
    for path in complete_checkpoints(run_dir / CHECKPOINTS_DIR):
        if int(path.name) > step:
            target = destination / CHECKPOINTS_DIR / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
            moved.append(target)
    return moved


def abandoned_dir(run_dir: Path, name: str) -> Path:
    """A new directory name ``run_dir/abandoned/<time>_<name>`` (not created)."""
    stem = f"{time.strftime('%Y%m%d-%H%M%S')}_{name}"
    destination, n = run_dir / ABANDONED_DIR / stem, 1
    while destination.exists():
        n += 1
        destination = run_dir / ABANDONED_DIR / f"{stem}-{n}"
    return destination


def _move_aside(step_dir: Path, destination: Path) -> Path:
    target = destination / step_dir.parent.name / step_dir.name
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(step_dir, target)
    return target


def set_aside_broken(run_dir: str | Path, destination: str | Path | None = None) -> list[Path]:
    """Move every step directory of ``run_dir/checkpoints`` that cannot be restored (incomplete:
    no ``_CHECKPOINT_METADATA`` or item; or failing its manifest) to
    ``destination/checkpoints/<n>`` (by default a new ``run_dir/abandoned/<time>_broken-checkpoints``);
    returns their new paths. Orbax's temporary directories are left alone.

    Such a directory is skipped on resume, but Orbax still lists its step, and would skip the
    save of that step: call this before opening ``RunCheckpoints`` (whose ``save`` also clears
    a broken directory of the step it saves)."""
    run_dir = Path(run_dir)
    latest = run_dir / CHECKPOINTS_DIR
    if not latest.is_dir():
        return []
    moved = []
    for path in sorted((p for p in latest.iterdir() if p.name.isdigit() and p.is_dir()),
                       key=lambda p: int(p.name)):
        try:
            if _is_complete(path):
                verify_manifest(path)
                continue
            reason = "incomplete"
        except CheckpointError as err:
            reason = str(err)
        if destination is None:
            destination = abandoned_dir(run_dir, "broken-checkpoints")
        target = _move_aside(path, Path(destination))
        log.warning("moved the checkpoint that cannot be restored aside to %s: %s", target, reason)
        moved.append(target)
    return moved


def _is_named_step(path: Path) -> bool:
    """Whether ``path`` names one step directory: ``RUN_DIR/checkpoints/<step>`` or ``RUN_DIR/best/<step>``."""
    return path.name.isdigit() and path.parent.name in (CHECKPOINTS_DIR, BEST_DIR)


def find_checkpoint(path: str | Path, which: str = "best") -> Path:
    """The checkpoint directory ``path`` names: a run directory (its newest complete ``best/``
    or ``checkpoints/`` step, as ``which`` says) or one step directory of either."""
    if which not in WHICH:
        raise ValueError(f"which={which!r}: must be one of {WHICH}")
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if _is_named_step(path):
        return path
    if not (path / "config.yaml").is_file():
        raise CheckpointError(f"{path}: not a run directory (no config.yaml) nor a checkpoint "
                              f"directory RUN_DIR/{CHECKPOINTS_DIR}/<step> or RUN_DIR/{BEST_DIR}/<step>")
    sub = path / (BEST_DIR if which == "best" else CHECKPOINTS_DIR)
    found = complete_checkpoints(sub)
    if not found:
        raise CheckpointError(f"{path}: no complete checkpoint under {sub}")
    return found[-1]


def resolve_resume(path: str | Path) -> tuple[Path, list[Path]]:
    """Map ``--resume PATH`` to (run directory, candidate checkpoints, preferred first).

    ``PATH`` is a run directory (newest complete checkpoint first, older ones as fallbacks) or
    one checkpoint directory ``RUN_DIR/checkpoints/<step>`` (or ``RUN_DIR/best/<step>``),
    which is then the only candidate.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"--resume {path}: no such file or directory")
    if _is_named_step(path):
        if not _is_complete(path):
            raise CheckpointError(f"--resume {path}: checkpoint is incomplete (interrupted save?)")
        return path.parent.parent, [path]
    candidates = list(reversed(complete_checkpoints(path / CHECKPOINTS_DIR)))
    if not candidates:
        raise CheckpointError(
            f"--resume {path}: no complete checkpoint under {path / CHECKPOINTS_DIR}"
        )
    return path, candidates


def _restore_items(step_dir: str | Path, **items: Any) -> dict[str, Any]:
    """Restore the named items (Orbax restore args) of one complete checkpoint directory; its
    ``meta`` is always among them and checked."""
    step_dir = Path(step_dir).absolute()
    if not _is_complete(step_dir):
        raise CheckpointError(f"{step_dir}: not a complete checkpoint")
    verify_manifest(step_dir)
    checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
    try:
        restored = checkpointer.restore(
            step_dir, args=ocp.args.Composite(**items, meta=ocp.args.JsonRestore()))
    except Exception as err:  # orbax/tensorstore raise many types for damaged files
        raise CheckpointError(f"{step_dir}: cannot be restored ({_short(err)})") from err
    finally:
        checkpointer.close()
    meta = restored["meta"]
    if not isinstance(meta, dict) or "step" not in meta:
        raise CheckpointError(f"{step_dir}: checkpoint metadata is missing or damaged")
    return restored


def restore(step_dir: str | Path, agent_template: Any) -> tuple[Any, dict[str, Any]]:
    """Restore (agent, meta) from one checkpoint directory, into ``agent_template``'s structure:
    verified against its manifest first, and its floating-point arrays checked finite after
    (CheckpointError otherwise)."""
    restored = _restore_items(step_dir, agent=ocp.args.StandardRestore(agent_template))
    check_finite(restored["agent"], step_dir)
    return restored["agent"], restored["meta"]


def read_meta(step_dir: str | Path) -> dict[str, Any]:
    """The ``meta`` item of one complete checkpoint directory (no arrays read)."""
    return _restore_items(step_dir)["meta"]


def restore_first_good(candidates: list[Path], agent_template: Any) -> tuple[Any, dict[str, Any], Path]:
    """Restore the first candidate that restores cleanly (verified, finite); the ones skipped
    are reported with a log warning and a ``UserWarning`` naming them."""
    errors = []
    for step_dir in candidates:
        try:
            agent, meta = restore(step_dir, agent_template)
        except CheckpointError as err:
            log.warning("skipping checkpoint: %s", err)
            warnings.warn(f"skipping checkpoint: {err}", stacklevel=2)
            errors.append(str(err))
            continue
        return agent, meta, step_dir
    raise CheckpointError("no checkpoint could be restored:\n  " + "\n  ".join(errors))
