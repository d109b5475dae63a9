"""Orbax checkpoints of a run: the latest N under ``checkpoints/<step>/``, the best under ``best/``.

Each checkpoint holds two items: ``agent`` (the SAC agent pytree: params, targets, optimiser
states, temperature) and ``meta`` (JSON: counters, RNG states, logs position). Orbax writes a
checkpoint into a temporary directory and renames it when complete, so a save interrupted at any
instant leaves either the whole checkpoint or a temporary directory that is never listed. A
directory that looks complete but cannot be restored (truncated by hand, disk trouble) is
reported, and the previous checkpoint is used instead.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp

log = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
BEST_DIR = "best"
_ITEMS = ("agent", "meta")
WHICH = ("best", "latest")
"""What ``find_checkpoint`` takes from a run directory: its kept best policy or its latest checkpoint."""


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or corrupt."""


def _manager(directory: Path, keep: int, asynchronous: bool = False) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=asynchronous
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ocp.CheckpointManager(directory.absolute(), options=options, item_names=_ITEMS)


def _save_args(agent: Any, meta: dict[str, Any]) -> ocp.args.Composite:
    return ocp.args.Composite(agent=ocp.args.StandardSave(agent), meta=ocp.args.JsonSave(meta))


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

    def save(self, step: int, agent: Any, meta: dict[str, Any], wait: bool = True) -> Path:
        """Save the latest checkpoint of ``step`` (kept: the newest ``keep``). ``wait=False``
        returns once Orbax has copied the arrays to the host (its default; so the caller may
        donate them to the next update at once) and writes them in its background thread: the
        checkpoint is complete (listed) when the next ``save`` or ``close`` returns;
        until then it is a temporary directory, as after a kill."""
        self._best.wait_until_finished()
        self._latest.wait_until_finished()
        if step not in self._latest.all_steps():
            self._latest.save(step, args=_save_args(agent, meta), force=True)
            if wait:
                self._latest.wait_until_finished()
        return self.latest_dir / str(step)

    def save_best(self, step: int, agent: Any, meta: dict[str, Any]) -> Path:
        """Save ``agent`` as the best policy (one is kept). A best/ of the same step, saved before
        a resume by an evaluation that scored less (the resumed run evaluates that step again),
        is replaced."""
        self._best.wait_until_finished()
        if step in self._best.all_steps():
            self._best.delete(step)
        self._best.save(step, args=_save_args(agent, meta), force=True)
        return self.best_dir / str(step)

    def check_for_errors(self) -> None:
        """Raise the error of a background save that has failed, if any, without waiting for a
        save in progress (the training loop calls it at every progress row, so a failing disk
        stops the run within ``log_freq`` env steps, not at the next checkpoint)."""
        self._latest.check_for_errors()
        self._best.check_for_errors()

    def close(self) -> None:
        try:
            self._latest.close()  # re-raises a failed background save
        finally:
            self._best.close()


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
    checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
    try:
        restored = checkpointer.restore(
            step_dir, args=ocp.args.Composite(**items, meta=ocp.args.JsonRestore()))
    except Exception as err:  # orbax/tensorstore raise many types for damaged files
        raise CheckpointError(f"{step_dir}: cannot be restored ({type(err).__name__}: {err})") from err
    finally:
        checkpointer.close()
    meta = restored["meta"]
    if not isinstance(meta, dict) or "step" not in meta:
        raise CheckpointError(f"{step_dir}: checkpoint metadata is missing or damaged")
    return restored


def restore(step_dir: str | Path, agent_template: Any) -> tuple[Any, dict[str, Any]]:
    """Restore (agent, meta) from one checkpoint directory, into ``agent_template``'s structure."""
    restored = _restore_items(step_dir, agent=ocp.args.StandardRestore(agent_template))
    return restored["agent"], restored["meta"]


def read_meta(step_dir: str | Path) -> dict[str, Any]:
    """The ``meta`` item of one complete checkpoint directory (no arrays read)."""
    return _restore_items(step_dir)["meta"]


def restore_first_good(candidates: list[Path], agent_template: Any) -> tuple[Any, dict[str, Any], Path]:
    """Restore the first candidate that restores cleanly; report the ones skipped."""
    errors = []
    for step_dir in candidates:
        try:
            agent, meta = restore(step_dir, agent_template)
        except CheckpointError as err:
            log.warning("skipping checkpoint: %s", err)
            errors.append(str(err))
            continue
        return agent, meta, step_dir
    raise CheckpointError("no checkpoint could be restored:\n  " + "\n  ".join(errors))
