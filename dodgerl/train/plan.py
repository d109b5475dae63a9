"""The execution plan: how a run is executed on this machine, chosen in one place.

The run config says what is learned (env, agent, ``n_envs``, ``utd``, budgets). How it runs
(envs in processes and their grouping, the dispatch thread, updates in flight, the replay's
device mirror and sampler, where evaluation runs) changes only speed, and is chosen here from the
backend, the observation, ``n_envs`` and the cores. Any choice can be overridden in the config's
``perf:`` section. The rules and why: docs/runs.md ("The execution plan").
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from dodgerl.config import ConfigError, RunConfig
from dodgerl.envs.make import image_side

LARGE_IMAGE_SIDE = 128
"""Above this side, an image policy acts too slowly on a CPU for evaluation processes: its
background evaluation keeps a copy on the training device instead."""
EVAL_WORKERS_IMAGES = 5
EVAL_WORKERS_VECTORS = 2


@dataclasses.dataclass(frozen=True)
class Machine:
    """What the plan is chosen from."""

    backend: str
    """``jax.default_backend()``: ``cpu``, ``gpu``, ``tpu``."""
    cores: int
    """CPU cores this process may use."""

    @property
    def accelerator(self) -> bool:
        return self.backend != "cpu"

    @staticmethod
    def this() -> Machine:
        import jax

        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            cores = os.cpu_count() or 1
        return Machine(jax.default_backend(), cores)


@dataclasses.dataclass(frozen=True)
class ExecutionPlan:
    """Every speed setting of a run, resolved (the fields of ``PerfConfig``, none left None)."""

    async_envs: bool
    envs_per_worker: int
    overlap: bool
    dispatch_thread: bool
    updates_in_flight: int
    device_mirror: bool
    prefetch: int
    sample_workers: int
    writeback_s: float
    eval_in_background: bool
    eval_on_device: bool
    eval_async_envs: bool
    eval_workers: int
    machine: Machine
    overridden: tuple[str, ...] = ()
    """The settings the config's ``perf:`` section chose."""

    def summary(self) -> str:
        """The plan in one line, as printed at the start of a run."""
        envs = (f"envs in {'subprocesses of ' + str(self.envs_per_worker) if self.async_envs else 'this process'}")
        if not self.overlap:
            updates = "plain loop (step, store, update, wait)"
        else:
            updates = (f"updates overlapped with the envs"
                       f"{', from a dispatch thread, ' + str(self.updates_in_flight) + ' in flight' if self.dispatch_thread else ''}")
        replay = ("replay mirrored on the device" if self.device_mirror
                  else f"replay sampled by {self.sample_workers} thread(s), {self.prefetch} batches ahead")
        if self.eval_workers:
            where = f"{self.eval_workers} processes"
        elif self.eval_in_background:
            where = "a background thread, " + ("on the device" if self.eval_on_device else "on the CPU")
        else:
            where = "the loop"
        evaluation = f"evaluation in {where}{' with episodes in subprocesses' if self.eval_async_envs else ''}"
        own = f"; set by perf: {', '.join(self.overridden)}" if self.overridden else ""
        return (f"plan ({self.machine.backend}, {self.machine.cores} cores): {envs}; {updates}; "
                f"{replay}; {evaluation}{own}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def write(self, run_dir: Path) -> None:
        (Path(run_dir) / "plan.json").write_text(json.dumps(self.to_dict(), indent=1) + "\n")


def choose_plan(config: RunConfig, machine: Machine | None = None, n_seeds: int = 1) -> ExecutionPlan:
    """The plan for ``config`` on ``machine`` (this one by default), ``config.perf`` applied;
    ``n_seeds`` seeds in one process share one pool of ``n_seeds * n_envs`` envs, and each
    seed gets its share of the evaluation processes."""
    machine = machine or Machine.this()
    chosen = _machine_choice(config, machine, n_seeds)
    overrides = {k: v for k, v in dataclasses.asdict(config.perf).items() if v is not None}
    plan = ExecutionPlan(**_consistent({**chosen, **overrides}, overrides), machine=machine,
                         overridden=tuple(sorted(overrides)))
    _check(plan, config, n_seeds)
    return plan


def _machine_choice(config: RunConfig, machine: Machine, n_seeds: int = 1) -> dict[str, Any]:
    n_envs = config.train.n_envs * n_seeds
    side = image_side(config.env)  # None for a vector observation
    image = side is not None
    accelerator = machine.accelerator
    # Subprocess envs pay off where cores are free beside the loop: on an accelerator host. On
    # a CPU backend the update needs the cores the subprocesses would take.
    async_envs = accelerator and n_envs > 1
    large_image = image and side > LARGE_IMAGE_SIDE
    if not accelerator:
        evaluation = dict(eval_in_background=False, eval_on_device=False, eval_async_envs=False,
                          eval_workers=0)
    elif large_image:  # acts slowly on a CPU: a device copy, episodes in subprocesses
        evaluation = dict(eval_in_background=True, eval_on_device=True, eval_async_envs=True,
                          eval_workers=0)
    else:  # acts fast on a CPU: processes with CPU copies of the policy
        workers = max(1, (EVAL_WORKERS_IMAGES if image else EVAL_WORKERS_VECTORS) // n_seeds)
        evaluation = dict(eval_in_background=True, eval_on_device=False, eval_async_envs=False,
                          eval_workers=min(workers, config.train.eval_episodes))
    return dict(
        async_envs=async_envs,
        envs_per_worker=envs_per_worker(n_envs, machine.cores) if async_envs else 1,
        overlap=True,
        # Launching an image update holds the calling thread about as long as the device runs
        # it; a vector update's launch is short, and on a CPU calls return at once.
        dispatch_thread=accelerator and image,
        updates_in_flight=2 if accelerator and image else 1,
        device_mirror=accelerator,
        prefetch=2,
        sample_workers=4 if image else 1,
        writeback_s=2.0,
        **evaluation,
    )


def _consistent(settings: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """The evaluation settings the overrides imply where the plan's own would contradict them
    (asking for evaluation processes drops the plan's device copy and episode subprocesses)."""
    out = dict(settings)
    free = lambda name: name not in overrides  # noqa: E731
    if out["eval_workers"] and free("eval_async_envs"):
        out["eval_async_envs"] = False
    if out["eval_workers"] and free("eval_on_device"):
        out["eval_on_device"] = False
    if out["eval_async_envs"] and free("eval_workers"):
        out["eval_workers"] = 0
    if out["eval_on_device"] and free("eval_workers"):
        out["eval_workers"] = 0
    if out["eval_on_device"] and free("eval_in_background"):
        out["eval_in_background"] = True
    if not out["eval_in_background"] and free("eval_on_device"):
        out["eval_on_device"] = False
    if out["async_envs"] is False and free("envs_per_worker"):
        out["envs_per_worker"] = 1
    return out


def envs_per_worker(n_envs: int, cores: int) -> int:
    """The fewest envs per subprocess (a divisor of ``n_envs``) that keep the subprocesses
    within the cores."""
    return next(d for d in range(1, n_envs + 1) if n_envs % d == 0 and n_envs // d <= max(cores, 1))


def _check(plan: ExecutionPlan, config: RunConfig, n_seeds: int = 1) -> None:
    """The combinations the loop cannot run, named by the perf key that asked for them."""
    def require(ok: bool, key: str, message: str) -> None:
        if not ok:
            raise ConfigError(f"perf.{key}: {message}")

    n_envs, episodes = config.train.n_envs * n_seeds, config.train.eval_episodes
    pool = f"train.n_envs x {n_seeds} seeds" if n_seeds > 1 else "train.n_envs"
    require(n_envs % plan.envs_per_worker == 0, "envs_per_worker",
            f"must divide {pool} ({n_envs}), got {plan.envs_per_worker}")
    require(plan.eval_workers <= episodes, "eval_workers",
            f"must be in [0, train.eval_episodes={episodes}], got {plan.eval_workers}")
    require(not plan.eval_on_device or (plan.eval_in_background and not plan.eval_workers),
            "eval_on_device", "needs perf.eval_in_background and no perf.eval_workers "
            "(it keeps the background evaluation's copy on the training device)")
    require(not (plan.eval_workers and plan.eval_async_envs), "eval_workers",
            "evaluation processes and perf.eval_async_envs exclude each other: set one")
