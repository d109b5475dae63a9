"""Many seeds in one process: N independent runs whose agents are stacked on a seed axis.

``train_seeds(config, [0, 1, 2, 3, 4])`` trains five seeds of one config at once. Each seed is
a complete run, in what a single run writes, and the group directory lists them::

    results/<experiment>/<YYYYmmdd_HHMMSS>/
        group.json             the seeds and their run directories
        seed0/  seed1/  ...    each: config.yaml plan.json progress.csv eval.csv
                               checkpoints/ best/ replay/ videos/

The seeds share one pool of ``N * n_envs`` envs (seed i steps the i-th ``n_envs`` of them) and
one compiled update: ``jax.vmap`` of the single agent's K-step update over the seed axis of
agent, batch and key (``dodgerl.agents.sac.seeds``), so seed i's results depend on seed i's
agent, replay and keys alone. Each seed keeps its own RunState (keys, counters), replay,
checkpoints and evaluation, exactly as a run of that seed alone would: the loop is
``dodgerl.train.loop``'s, over every seed. With several devices the seed axis is sharded over
them; the replay's device mirror is one ``(N, ...)`` array sharded the same way, and is used
only where N mirrors fit the devices' memory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from dodgerl.checkpoint import CheckpointError, resolve_resume
from dodgerl.config import ConfigError, RunConfig, load_run_config, save_config
from dodgerl.train.checkpointing import changed_keys, new_run_dir, set_aside_replay
from dodgerl.train.dispatcher import Dispatcher
from dodgerl.train.loop import RunFiles, TrainResult, run_loop
from dodgerl.train.plan import ExecutionPlan
from dodgerl.train.setup import with_env_structure

GROUP_FILE = "group.json"
MIRROR_MEMORY_FRACTION = 0.85
"""Of a device's memory, what the seeds' replay mirrors may take (the rest: agents, batches,
activations of the update)."""


@dataclasses.dataclass
class GroupResult:
    group_dir: Path
    runs: list[TrainResult]


def parse_seeds(text: str) -> list[int]:
    """``0-4`` -> [0, 1, 2, 3, 4]; ``0,3,7`` and ``0-2,9`` too. Seeds are distinct, >= 0."""
    seeds: list[int] = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not match:
            raise ConfigError(f"--seeds {text!r}: expected seeds like 0-4 or 0,3,7")
        lo, hi = int(match[1]), int(match[2] if match[2] is not None else match[1])
        if hi < lo:
            raise ConfigError(f"--seeds {text!r}: the range {lo}-{hi} is empty")
        seeds.extend(range(lo, hi + 1))
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {text!r}: a seed is listed twice")
    return seeds


def is_group_dir(path: str | Path) -> bool:
    return (Path(path) / GROUP_FILE).is_file()


def train_seeds(config: RunConfig | None, seeds: list[int] | None = None,
                results_dir: str | Path = "results", resume: str | Path | None = None,
                total_timesteps: int | None = None, fresh_replay: bool = False,
                on_start: Callable[[Path], None] | None = None) -> GroupResult:
    """Train ``config`` with each of ``seeds`` (the config's own seed is replaced), all in this
    process; or, with ``resume`` (a group directory), resume every seed of the group from its
    own ``config.yaml`` (``config`` and ``seeds`` then unused). ``total_timesteps`` sets each
    seed's new budget; ``fresh_replay`` sets every seed's replay aside (see ``train``)."""
    group_dir, runs = _open_group(config, seeds, results_dir, resume, total_timesteps)
    if fresh_replay and resume is not None:
        for files in runs:
            set_aside_replay(files.run_dir)
    if on_start is not None:
        on_start(group_dir)
    print(f"group directory: {group_dir} ({len(runs)} seeds: "
          f"{', '.join(str(f.config.seed) for f in runs)})", flush=True)
    return GroupResult(group_dir, run_loop(runs[0].config, runs, stacked=True))


def _open_group(config: RunConfig | None, seeds: list[int] | None, results_dir: str | Path,
                resume: str | Path | None, total_timesteps: int | None
                ) -> tuple[Path, list[RunFiles]]:
    if resume is None:
        if not seeds:
            raise ConfigError("train_seeds: no seeds given")
        config = with_env_structure(config)  # before the directory: a bad config leaves none
        config = with_stackable_convs(config, len(seeds))
        if total_timesteps is not None:
            config = config.with_total_timesteps(total_timesteps)
        group_dir = new_run_dir(results_dir, config.experiment)
        names = [f"seed{s}" for s in seeds]
        (group_dir / GROUP_FILE).write_text(json.dumps(
            {"experiment": config.experiment, "seeds": list(seeds), "runs": names}, indent=1) + "\n")
        runs = []
        for seed, name in zip(seeds, names):
            (group_dir / name).mkdir()
            seed_config = dataclasses.replace(config, seed=seed)
            save_config(seed_config, group_dir / name / "config.yaml")
            runs.append(RunFiles(group_dir / name, seed_config, []))
        return group_dir, runs
    group_dir = Path(resume)
    if not is_group_dir(group_dir):
        raise CheckpointError(f"--resume {group_dir}: not a group directory (no {GROUP_FILE}); "
                              "a single run is resumed without --seeds")
    listed = json.loads((group_dir / GROUP_FILE).read_text())
    runs = []
    for name in listed["runs"]:
        run_dir, candidates = resolve_resume(group_dir / name)
        seed_config = load_run_config(run_dir)
        if total_timesteps is not None:
            seed_config = seed_config.with_total_timesteps(total_timesteps)
            save_config(seed_config, run_dir / "config.yaml")
        runs.append(RunFiles(run_dir, seed_config, candidates))
    _check_same_configs(runs)
    _common_candidates(runs)
    return group_dir, runs


def _check_same_configs(runs: list[RunFiles]) -> None:
    """The seeds of a group must share their config but for the seed: the group's one update
    and pool of envs are built from it."""
    reference = dataclasses.replace(runs[0].config, seed=0).to_dict()
    for files in runs[1:]:
        other = dataclasses.replace(files.config, seed=0).to_dict()
        if other != reference:
            differ = [k for k, _, _ in changed_keys(reference, other)] or ["a key"]
            raise ConfigError(f"{files.run_dir / 'config.yaml'}: differs from "
                              f"{runs[0].run_dir / 'config.yaml'} in {', '.join(differ)}; the "
                              "seeds of a group share one config")


def _common_candidates(runs: list[RunFiles]) -> None:
    """Each seed's candidates (its complete checkpoints, newest first) cut to the steps every
    seed has: the seeds resume from one step, the newest all of them saved (after a kill -9 in
    the middle of the seeds' saves some have one more), and step together in one pool and one
    update."""
    steps = set.intersection(*({int(c.name) for c in files.candidates} for files in runs))
    if not steps:
        raise CheckpointError("--resume: the seeds of the group have no complete checkpoint of "
                              "one step in common")
    for files in runs:
        files.candidates = [c for c in files.candidates if int(c.name) in steps]


# ---------------------------------------------------------------- memory


def plan_for_memory(plan: ExecutionPlan, replays: list[Any]) -> ExecutionPlan:
    """The plan with the device mirror kept only where every seed's mirror fits the devices'
    memory: else host replay, said in one line; or, where ``perf.device_mirror`` asked for the
    mirror, a ConfigError that says how many seeds fit."""
    if not plan.device_mirror:
        return plan
    from dodgerl.replay.buffer import _fmt_bytes
    from dodgerl.replay.mirror import device_memory_bytes, mirror_bytes

    devices = _seed_devices(len(replays))
    total = device_memory_bytes(devices[0])
    if total is None:  # a CPU backend reports none: host memory, nothing to check here
        return plan
    one = mirror_bytes(replays[0])
    per_device = -(-len(replays) // len(devices))
    fit = int(MIRROR_MEMORY_FRACTION * total // one) * len(devices) if one else len(replays)
    if per_device * one <= MIRROR_MEMORY_FRACTION * total:
        return plan
    need = (f"{len(replays)} device mirrors of the replay need {_fmt_bytes(one)} each, "
            f"{_fmt_bytes(per_device * one)} per device; {len(devices)} device(s) of "
            f"{_fmt_bytes(total)} hold {fit} (at most {MIRROR_MEMORY_FRACTION:.0%} of each)")
    if "device_mirror" in plan.overridden:
        raise ConfigError(f"perf.device_mirror: {need}; train at most {fit} seeds at once, "
                          "lower replay.buffer_size, or set perf.device_mirror: false")
    print(f"note: {need}: replay sampled on the host instead", flush=True)
    return dataclasses.replace(plan, device_mirror=False)


def _seed_devices(n_seeds: int) -> list[Any]:
    """The devices the seed axis is sharded over: the most of the local ones that N splits
    evenly over (all of them when N is a multiple of their count)."""
    devices = jax.local_devices()
    count = max(d for d in range(1, len(devices) + 1) if n_seeds % d == 0)
    return devices[:count]


def _seed_sharding(n_seeds: int) -> Any:
    """The sharding of the seed axis, or None on one device."""
    devices = _seed_devices(n_seeds)
    if len(devices) == 1:
        return None
    from dodgerl.agents.sac.seeds import seed_sharding

    return seed_sharding(devices)


# ---------------------------------------------------------------- the stacked dispatcher


@jax.jit
def take_seed(tree: Any, seed: jax.Array) -> Any:
    """Seed ``seed``'s slice of every leaf of a stacked tree, in new buffers, in one compiled
    call (one program for every seed)."""
    return jax.tree_util.tree_map(lambda x: x[seed], tree)


class GroupDispatcher(Dispatcher):
    """The dispatcher of N stacked seeds: one act and one update call advance all of them.

    The loop passes one key per seed; each seed's batch is drawn from its own replay (by the
    replay's own seeded Generator, in seed order) and stacked on the seed axis.
    """

    def __init__(self, agents: list[Any], replays: list[Any], plan: ExecutionPlan,
                 batch_size: int, steps_per_call: int, update_every: int,
                 timings: dict[str, float], cleanup: contextlib.ExitStack) -> None:
        from dodgerl.agents.sac import seeds as sac_seeds

        self.replays = list(replays)
        self.n_seeds = len(agents)
        self._sharding = _seed_sharding(self.n_seeds)
        agent = sac_seeds.stack(agents)
        if self._sharding is not None:
            agent = jax.device_put(agent, self._sharding)
            print(f"seeds sharded over {len(self._sharding.device_set)} devices", flush=True)
        self._samplers: list[Any] = []
        # The first act and update calls check the seed axes and shapes; the same calls follow.
        self._validate_act = self._validate_update = True
        super().__init__(agent, replays[0], plan, batch_size, steps_per_call, update_every,
                         timings, cleanup)

    def _make_mirror(self) -> Any:
        from dodgerl.replay.mirror import StackedMirror

        return StackedMirror(self.replays, self._sharding)

    def _close_samplers(self) -> None:
        for sampler in self._samplers:
            sampler.close()

    def seed_view(self, seed: int) -> SeedView:
        return SeedView(self, seed)

    def metrics_of(self, seed: int) -> dict[str, Any]:
        return {k: np.asarray(v)[seed] for k, v in self.metrics.items()}

    def update_due(self) -> bool:
        return (self._pending_calls >= self.update_every
                and min(len(r) for r in self.replays) >= self.batch_size)

    def act(self, observations: np.ndarray, keys: jax.Array) -> Future:
        from dodgerl.agents.sac.seeds import act_stacked

        n = self.n_seeds
        per_seed = observations.reshape(n, observations.shape[0] // n, *observations.shape[1:])

        def call() -> jax.Array:
            actions = act_stacked(self.agent, per_seed, keys, validate=self._validate_act)
            self._validate_act = False
            return actions.reshape(-1, actions.shape[-1])

        return self.submit(call)

    def copy_agent(self) -> Future:
        raise TypeError("a group's agent is copied one seed at a time: seed_view(i).copy_agent()")

    def copy_seed(self, seed: int) -> Future:
        """A copy of seed ``seed``'s agent after the calls submitted so far."""
        index = np.int32(seed)
        return self.submit(lambda: take_seed(self.agent, index))

    def _update_call(self, keys: jax.Array) -> Callable[[], Any]:
        from dodgerl.agents.sac import Batch
        from dodgerl.agents.sac.seeds import update_from_stacked, update_stacked

        if self.mirror is not None:
            from dodgerl.replay.mirror import gather_batch

            mirror = self.mirror
            host_indices = mirror.draw_indices(self.batch_size, self.steps_per_call)
            indices = self.submit(lambda: jax.device_put(host_indices, mirror.device))

            def from_mirror() -> Any:  # the indices' upload ran before this, in order
                self.agent, metrics = update_from_stacked(self.agent, mirror.frames,
                                                          indices.result(), keys,
                                                          gather_batch, self._validate_update)
                self._validate_update = False
                return metrics

            return from_mirror
        if not self._samplers:
            from dodgerl.replay import DeviceSampler

            # Each seed's sampler as a run alone has it: how far ahead batches are drawn
            # (prefetch + workers - 1) decides what they hold.
            self._samplers = [DeviceSampler(r, batch_size=self.batch_size,
                                            steps_per_call=self.steps_per_call,
                                            prefetch=self._prefetch, workers=self._sample_workers)
                              for r in self.replays]
        draws = [next(sampler) for sampler in self._samplers]
        batch = Batch(**_stack(draws))

        def from_batch() -> Any:
            self.agent, metrics = update_stacked(self.agent, batch, keys,
                                                 self._validate_update)
            self._validate_update = False
            return metrics

        return from_batch


@jax.jit
def _stack(trees: list[Any]) -> Any:
    """The seeds' batches (equal pytrees) stacked on a new leading seed axis in one compiled
    call; an eager ``jnp.stack`` per field costs one dispatch each, per update."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def with_stackable_convs(config: RunConfig, n_seeds: int) -> RunConfig:
    """``config`` with ``agent.impl.conv_gemm: true`` where it leaves the choice open (null) and
    the seeds' convolutions would otherwise run as cuDNN convolutions (images above
    ``CONV_GEMM_MAX_SIDE`` on an accelerator). Vmapped over per-seed weights a convolution
    becomes a grouped convolution, far slower per seed than one seed's own; a GEMM becomes a
    batched GEMM (benchmarks/reports/seeds_h100). The same function either way, up to float
    summation order. The choice is written into each seed's config.yaml, so a resume (of the
    group or of one seed alone) computes what the run computed."""
    from dodgerl.agents.sac.fast import CONV_GEMM_MAX_SIDE
    from dodgerl.envs.make import image_side

    if n_seeds < 2 or config.agent.impl.conv_gemm is not None or jax.default_backend() == "cpu":
        return config
    side = image_side(config.env)
    if side is None or side <= CONV_GEMM_MAX_SIDE:
        return config
    print(f"note: {n_seeds} stacked seeds of {side}x{side} images compute their convolutions as "
          "GEMMs (agent.impl.conv_gemm=true): vmapped cuDNN convolutions update far slower per "
          "seed (benchmarks/reports/seeds_h100)", flush=True)
    impl = dataclasses.replace(config.agent.impl, conv_gemm=True)
    return dataclasses.replace(config, agent=dataclasses.replace(config.agent, impl=impl))


class SeedView:
    """What one seed's evaluation and checkpoints see of a group's dispatcher: the calls in
    order with everyone's, and that seed's agent."""

    def __init__(self, dispatcher: GroupDispatcher, seed: int) -> None:
        self._dispatcher, self._seed = dispatcher, seed

    def submit(self, fn: Callable[[], Any]) -> Future:
        return self._dispatcher.submit(fn)

    def drain(self) -> None:
        self._dispatcher.drain()

    @property
    def agent(self) -> Any:
        """This seed's agent now (a copy; after ``drain``)."""
        return take_seed(self._dispatcher.agent, np.int32(self._seed))

    def copy_agent(self) -> Future:
        return self._dispatcher.copy_seed(self._seed)


def read_group(group_dir: str | Path) -> dict[str, Any]:
    """The group's ``group.json`` (seeds and run directory names)."""
    return json.loads((Path(group_dir) / GROUP_FILE).read_text())

