"""Checkpointing: the run's counters and RNG state, saves on a thread of their own, and resume.

Every Orbax call of a run is made by one thread, in order (the manager is not made for calls
from two threads): the periodic checkpoints and best/ are saved from copies of the agent while
the loop goes on. A resume restores the newest checkpoint that restores (or the one named),
moves what a later, abandoned continuation saved out of the way, and rewinds the replay to the
checkpoint's commit.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from dodgerl.checkpoint import (BEST_DIR, CheckpointError, RunCheckpoints, abandoned_dir,
                                complete_checkpoints, read_meta, restore_first_good,
                                set_aside_after)


@dataclasses.dataclass
class RunState:
    """What a checkpoint's meta holds beside the agent: counters, best return, RNG state."""

    key: jax.Array
    np_rng: np.random.Generator
    step: int = 0
    episodes: int = 0
    updates: int = 0
    best_eval: float | None = None
    wall_offset: float = 0.0
    """Wall-clock seconds of the run before this process (earlier segments of a resumed run)."""
    resumes: int = 0
    next_eval: int | None = None
    """The first evaluation not yet started: one due at a checkpoint's own step (a checkpoint
    comes before the evaluation of its step) runs first thing on resume."""
    t_start: float = dataclasses.field(default_factory=time.perf_counter)
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    """The run's config as plain data: every checkpoint records it, so that a resume can name
    a key of config.yaml that changed since."""

    def split_key(self) -> jax.Array:
        """A fresh key for one use; the run's key moves on."""
        self.key, sub = jax.random.split(self.key)
        return sub

    def wall_time(self, now: float | None = None) -> float:
        return self.wall_offset + ((time.perf_counter() if now is None else now) - self.t_start)

    def meta(self, replay_transitions: int) -> dict[str, Any]:
        return {
            "step": self.step, "episodes": self.episodes, "updates": self.updates,
            "best_eval": self.best_eval, "key": np.asarray(self.key).tolist(),
            "np_rng": self.np_rng.bit_generator.state, "wall_time_s": self.wall_time(),
            "replay_transitions": replay_transitions, "resumes": self.resumes,
            "next_eval": self.next_eval, "config": self.config,
        }


@jax.jit
def _split_each(keys: tuple[jax.Array, ...]) -> tuple[tuple[jax.Array, ...], tuple[jax.Array, ...], jax.Array]:
    pairs = [jax.random.split(key) for key in keys]
    subs = tuple(pair[1] for pair in pairs)
    return tuple(pair[0] for pair in pairs), subs, jnp.stack(subs)


def split_keys(states: list[RunState]) -> tuple[tuple[jax.Array, ...], jax.Array]:
    """A fresh key of each state, as ``split_key`` would give it (each state's key moves on
    alike), in one compiled call rather than one eager split per state: the loop takes keys
    for every seed at every act and update call. Returns them one by one and stacked (N,)."""
    keys, subs, stacked = _split_each(tuple(state.key for state in states))
    for state, key in zip(states, keys):
        state.key = key
    return subs, stacked


def new_run_dir(results_dir: str | Path, experiment: str) -> Path:
    """``results_dir/experiment/<YYYYmmdd_HHMMSS>``, created (a suffix if the second is taken)."""
    base = Path(results_dir) / experiment
    stamp = datetime.now().strftime("%Y%m%d_%H%M%S")
    base.mkdir(parents=True, exist_ok=True)
    run_dir, suffix = base / stamp, 1
    while True:  # mkdir is atomic: two runs started in the same second get different suffixes
        try:
            run_dir.mkdir()
            return run_dir
        except FileExistsError:
            run_dir, suffix = base / f"{stamp}_{suffix}", suffix + 1


def set_aside_replay(run_dir: Path) -> None:
    """Move the run's replay buffer aside (``ReplayBuffer.discard``: never deleted), so that
    the resumed run starts an empty one."""
    from dodgerl.replay import ReplayBuffer

    if (run_dir / "replay").exists():
        where = ReplayBuffer.discard(run_dir / "replay")
        print(f"replay buffer set aside in {where}; starting an empty one", flush=True)


def resume_state(run_dir: Path, candidates: list[Path], agent: Any, state: RunState,
                 eval_freq: int) -> tuple[Any, bool]:
    """Restore the newest good checkpoint of ``candidates`` into ``agent`` and ``state``;
    returns the agent and whether the evaluation of the restored step is still due."""
    check_same_config(candidates, state.config)
    agent, meta, restored_from = restore_first_good(candidates, agent)
    state.step, state.episodes, state.updates = meta["step"], meta["episodes"], meta["updates"]
    state.best_eval = meta.get("best_eval")
    state.wall_offset = meta.get("wall_time_s", 0.0)
    state.key = jax.numpy.asarray(np.asarray(meta["key"], dtype=np.uint32))
    state.np_rng.bit_generator.state = meta["np_rng"]
    state.resumes = meta.get("resumes", 0) + 1
    print(f"resumed from {restored_from} at step {state.step}", flush=True)
    abandon_after(run_dir, state.step, meta.get("replay_header"), restored_from)
    # best/ may hold a policy evaluated after this checkpoint (the evaluation of its step, re-run
    # now; a later one before a kill; one of an abandoned continuation): it stays the run's
    # best, and only a better evaluation replaces it.
    kept_best = complete_checkpoints(run_dir / BEST_DIR)
    if kept_best:
        try:
            saved_best = read_meta(kept_best[-1]).get("best_eval")
        except CheckpointError:
            saved_best = None
        if saved_best is not None and (state.best_eval is None or saved_best > state.best_eval):
            state.best_eval = saved_best
    # Checkpoints made before the evaluation of their step record it as the next one due.
    eval_due = False
    if eval_freq and meta.get("next_eval") is not None:
        state.next_eval = meta["next_eval"]
        eval_due = state.step >= state.next_eval
    return agent, eval_due


FIXED_ON_RESUME = ("env", "agent", "replay.buffer_size", "replay.n_step", "train.n_envs")
"""Config keys a resumed run cannot change: they shape the agent, the replay or the envs."""


def changed_keys(saved: dict[str, Any], now: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, value in ``saved``, value in ``now``) for each key of ``FIXED_ON_RESUME`` that
    differs (the agent's ``impl``, how its update is computed, may change)."""
    def leaves(d: Any, prefix: str) -> dict[str, Any]:
        if not isinstance(d, dict):
            return {prefix: d}
        return {k: v for key, value in d.items() for k, v in leaves(value, f"{prefix}.{key}").items()}

    out = []
    for fixed in FIXED_ON_RESUME:
        section, _, name = fixed.partition(".")
        a, b = saved.get(section, {}), now.get(section, {})
        if name:
            a, b = {name: a.get(name)}, {name: b.get(name)}
        a, b = leaves(a, section), leaves(b, section)
        for key in sorted(set(a) | set(b)):
            if not key.startswith("agent.impl.") and a.get(key) != b.get(key):
                out.append((key, a.get(key), b.get(key)))
    return out


def check_same_config(candidates: list[Path], now: dict[str, Any]) -> None:
    """Raise a ConfigError naming the first key of config.yaml that differs from what the
    newest checkpoint recorded (checkpoints from before it was recorded are not checked)."""
    from dodgerl.config import ConfigError

    for step_dir in candidates:
        try:
            saved = read_meta(step_dir).get("config")
        except CheckpointError:
            continue  # an unreadable checkpoint is skipped by the restore, with its warning
        if not saved:
            return
        changed = changed_keys(saved, now)
        if changed:
            key, was, says = changed[0]
            raise ConfigError(f"{key}: the run was {was!r}, config.yaml now says {says!r}; a "
                              "resumed run keeps the settings its checkpoints were made with "
                              "(restore config.yaml, or start a new run)")
        return


class Checkpointer:
    """The run's checkpoint manager behind one saving thread; a failed save raises at the next
    ``check``."""

    def __init__(self, run_dir: Path, keep: int, cleanup: contextlib.ExitStack) -> None:
        self.checkpoints = RunCheckpoints(run_dir, keep)  # after the restore: Orbax lists the steps it finds
        cleanup.callback(self.checkpoints.close)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="checkpoint")
        cleanup.callback(self._thread.shutdown)  # before the manager is closed
        self._saves: collections.deque[Future] = collections.deque()  # not yet observed

    def _submit(self, fn: Callable[[], Any]) -> Future:
        future = self._thread.submit(fn)
        self._saves.append(future)
        return future

    def save(self, step: int, agent: Future, meta: dict[str, Any], wait: bool) -> None:
        """Save ``agent`` (a Future of a copy) as the checkpoint of ``step``; with ``wait``,
        return once it is written."""
        self._submit(lambda: self.checkpoints.save(step, agent.result(), meta, wait=wait))
        if wait:
            self.check(wait=True)

    def save_best(self, step: int, agent: Any, meta: dict[str, Any], wait: bool) -> None:
        """Save ``agent`` as best/<step>; ``wait`` when the agent is the live one, which the
        next update donates."""
        saved = self._submit(lambda: self.checkpoints.save_best(step, agent, meta))
        if wait:
            saved.result()

    def check(self, wait: bool = False) -> None:
        """Raise the error of a failed save, if any: of a finished save (all of them, waited
        for, with ``wait``), or of Orbax's background writes while no save is being made."""
        while self._saves and (wait or self._saves[0].done()):
            self._saves.popleft().result()
        if not self._saves:
            self.checkpoints.check_for_errors()


def abandon_after(run_dir: Path, step: int, replay_header: dict[str, Any] | None,
                   restored_from: Path) -> None:
    """A resume from a checkpoint older than what the run saved last (``--resume`` of a named
    checkpoint; the newest one could not be restored; a kill -9 while the newest was being
    written): the run continues from ``step``, and what the abandoned continuation saved after it
    moves out of its way, to ``abandoned/<time>_after_<step>/``: its checkpoints (else a later
    resume would take them for the newest, and this run could not save its own at those steps),
    the replay header of its last commit (the buffer is rewound to the checkpoint's commit: what
    was added after it is no longer sampled and gets overwritten) and a copy of progress.csv and
    eval.csv as they were (the resumed run drops their rows after ``step``). best/ stays. Nothing
    happens when nothing was saved after ``step``.

    A checkpoint without the replay header (best/ checkpoints; checkpoints saved before it was
    recorded) cannot rewind the buffer: it is reopened as it is, and a named resume says so."""
    from dodgerl.replay import rewind_check, rewind_header

    replay_dir = run_dir / "replay"
    # Read only first: a header of another buffer raises before anything moves. Then the
    # checkpoints, then the buffer: a crash in between leaves what a plain resume repairs.
    have_buffer = (replay_dir / "header.json").is_file()
    can_rewind = bool(replay_header) and have_buffer
    dropped = rewind_check(replay_dir, replay_header) if can_rewind else 0
    destination = abandoned_dir(run_dir, f"after_{step}")
    moved = set_aside_after(run_dir, step, destination)
    if can_rewind and dropped >= 0:
        # Dropped > 0: the rewind; 0: the sampling RNG's state set back to the checkpoint's.
        rewind_header(replay_dir, replay_header, keep_as=destination / "replay_header.json")
    elif can_rewind:
        print(f"warning: the replay buffer in {replay_dir} holds less than checkpoint {step} saw "
              "(was it recreated?): reopened as it is", flush=True)
    elif have_buffer and (moved or restored_from.parent.name == BEST_DIR):
        print(f"warning: {restored_from} does not record the replay buffer's state: the buffer "
              "is reopened as it is, with what was added after that step", flush=True)
    if not (dropped > 0 or moved):
        return
    destination.mkdir(parents=True, exist_ok=True)
    for log_name in ("progress.csv", "eval.csv"):
        if (run_dir / log_name).is_file():
            shutil.copy2(run_dir / log_name, destination / log_name)
    what = ", ".join(str(p.relative_to(destination)) for p in moved) or "no checkpoint"
    rewound = f"; replay buffer rewound to it ({dropped} transitions dropped)" if dropped > 0 else ""
    print(f"resuming from step {step}, before the run's last save: {what} set aside in "
          f"{destination}{rewound}", flush=True)


