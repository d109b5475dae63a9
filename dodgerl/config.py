"""Run configuration: YAML -> frozen dataclasses, ``--set`` overrides, validation at load time.

A run config has five sections and two top-level keys::

    experiment: sac_topdown_cnn_easy   # results/<experiment>/<timestamp>/
    seed: 0
    env:    {...}   # EnvConfig: which env (id, kwargs; the dodge arena's own keys), which observation
    agent:  {...}   # dodgerl.agents.sac.SACConfig: the learner
    replay: {...}   # ReplayConfig: the on-disk buffer
    train:  {...}   # TrainConfig: the loop (budget, warm-up, evaluation, checkpoints)
    perf:   {...}   # PerfConfig, optional: overrides of the execution plan the machine chooses

Every section is a :class:`dodgerl.validation.Validated` dataclass, so every key is checked when
the file is loaded, before any env or device work: an unknown key, a value of the wrong type or
an invalid value raises :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import re
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml

from dodgerl.validation import ConfigError, Validated, build, check, coerce, plain

__all__ = ["ConfigError", "DODGE_ID", "EnvConfig", "ReplayConfig", "TrainConfig", "PerfConfig", "RunConfig",
           "config_from_dict", "load_config", "load_run_config", "save_config", "apply_overrides",
           "read_yaml", "parse_override"]


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-3`` (no dot) as a string; researchers write it as a number."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)


DODGE_ID = "dodgerl/Dodge-v0"
"""The env a config trains on when it names none."""

DODGE_DEFAULTS: dict[str, Any] = {"level": 1, "obs_mode": "topdown", "image_size": 256,
                                  "action_space_type": "basic", "max_episode_steps": 1000}
"""What the dodge env's own keys are when a dodge config leaves them out."""

DODGE_ONLY = ("level", "obs_mode", "image_size", "action_space_type")
"""Keys of the dodge env alone: another env's arguments go in ``env.kwargs``."""


@dataclasses.dataclass(frozen=True)
class EnvConfig(Validated):
    """Which env, and what the agent sees of it.

    ``id`` is any registered Gymnasium id whose observation is a Box (a float vector or a uint8
    HxWxC image) and whose actions are a Box with finite bounds; ``kwargs`` go to
    ``gymnasium.make``. The dodge env's own arguments (``level``, ``obs_mode``, ``image_size``,
    ``action_space_type``) are keys of their own, filled with the dodge defaults for
    ``dodgerl/Dodge-v0`` and left None (and refused) for every other env (docs/envs.md)."""

    PREFIX = "env"

    id: str = DODGE_ID
    """Gymnasium id of the env (``dodgerl/Dodge-v0``, ``HalfCheetah-v5``, ``module:Id-v0``)."""
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Keyword arguments of ``gymnasium.make(id, ...)`` (e.g. ``{forward_reward_weight: 1.0}``)."""
    level: int | None = None
    """Difficulty level of ``dodgerl/Dodge-v0`` (1, 2 or 3); dodge only."""
    obs_mode: Literal["vector", "topdown"] | None = None
    """``vector`` (65-dim state) or ``topdown`` (uint8 RGB image); dodge only."""
    image_size: int | None = None
    """Side of the square image in pixels (64..256); ignored for ``vector``; dodge only."""
    action_space_type: Literal["basic", "dash"] | None = None
    """``basic`` (2-dim desired velocity) or ``dash`` (adds a dash trigger); dodge only."""
    frame_stack: int = 1
    """Number of most recent frames stacked on the channel axis (image observations only)."""
    max_episode_steps: int | None = None
    """Episodes are truncated after this many steps (dodge: 1000). Other envs: None keeps the
    limit the env is registered with; a number replaces it (``gymnasium.make``'s
    ``max_episode_steps``)."""

    @property
    def is_dodge(self) -> bool:
        return self.id == DODGE_ID

    def __post_init__(self) -> None:
        if self.id == DODGE_ID:
            for name, value in DODGE_DEFAULTS.items():
                if getattr(self, name) is None:
                    object.__setattr__(self, name, value)
        if isinstance(self.kwargs, Mapping):  # a copy: the config is frozen, its kwargs too
            object.__setattr__(self, "kwargs", dict(self.kwargs))
        super().__post_init__()

    def check(self) -> None:
        self.require(self.id != "", "id", "must name a registered Gymnasium env, got ''")
        self.require(isinstance(self.kwargs, dict) and all(isinstance(k, str) for k in self.kwargs),
                     "kwargs", f"expected a mapping of argument names to values, got {self.kwargs!r}")
        for name in ("render_mode", "max_episode_steps"):
            self.require(name not in self.kwargs, f"kwargs.{name}",
                         "set by the run itself" if name == "render_mode" else
                         "set env.max_episode_steps instead")
        if self.is_dodge:
            for name in DODGE_ONLY:
                self.require(name not in self.kwargs, f"kwargs.{name}", f"set env.{name} instead")
            self.require(self.level in (1, 2, 3), "level", f"must be 1, 2 or 3, got {self.level!r}")
            self.require(64 <= self.image_size <= 256, "image_size",
                         f"must be in 64..256, got {self.image_size}")
        else:
            for name in DODGE_ONLY:
                self.require(getattr(self, name) is None, name,
                             f"a key of {DODGE_ID} only; arguments of {self.id} go in env.kwargs")
        self.require(self.frame_stack >= 1, "frame_stack", f"must be >= 1, got {self.frame_stack}")
        # Another env's observation is known once it is made: make_env checks its frame_stack.
        self.require(self.frame_stack == 1 or not self.is_dodge or self.obs_mode == "topdown",
                     "frame_stack",
                     "frame stacking applies to image observations only (env.obs_mode: topdown)")
        self.require(self.max_episode_steps is None or self.max_episode_steps >= 1,
                     "max_episode_steps", f"must be >= 1, got {self.max_episode_steps}")

    def to_dict(self) -> dict[str, Any]:
        """Plain data for config.yaml. ``id`` and ``kwargs`` are written where they are not the
        dodge default and empty, and the dodge keys only for the dodge env: a dodge run's
        config.yaml (and the config its checkpoints record, which a resume compares) reads as
        before these keys existed."""
        out = plain(dataclasses.asdict(self))
        if self.is_dodge:
            out.pop("id")
        else:
            for name in DODGE_ONLY:
                out.pop(name)
        if not self.kwargs:
            out.pop("kwargs")
        return out


@dataclasses.dataclass(frozen=True)
class ReplayConfig(Validated):
    """The on-disk replay buffer (``<run_dir>/replay``)."""

    PREFIX = "replay"

    buffer_size: int = 100_000
    """Capacity in transitions (split evenly between the parallel envs)."""
    n_step: int = 1
    """n-step returns: each sampled transition sums up to ``n_step`` discounted rewards of its
    episode and bootstraps from the observation that many steps later (``ReplayBuffer``'s
    ``n_step``; the discount is ``agent.gamma``). 1 = plain one-step SAC."""

    def check(self) -> None:
        self.require(self.buffer_size >= 2, "buffer_size", f"must be >= 2, got {self.buffer_size}")
        self.require(self.n_step >= 1, "n_step", f"must be >= 1, got {self.n_step}")


@dataclasses.dataclass(frozen=True)
class TrainConfig(Validated):
    """The training loop: budget, warm-up, update ratio, evaluation, logging, checkpoints."""

    PREFIX = "train"

    total_timesteps: int = 500_000
    """Env steps (summed over parallel envs) after which the run stops."""
    learning_starts: int = 5_000
    """Env steps of uniform random actions before the first gradient step."""
    n_envs: int = 1
    """Parallel training envs (a Gymnasium vector env). Each vector step adds ``n_envs``
    transitions and ``utd * n_envs`` gradient steps: it changes what is learned from."""
    utd: int = 1
    """Gradient steps per env step (update-to-data ratio); all of one vector step's updates run
    in one compiled call (``utd * n_envs`` stacked batches)."""
    update_every: int = 1
    """Vector-env steps between update calls; each call then runs ``utd * n_envs * update_every``
    gradient steps (same ratio, fewer and larger compiled calls, a policy that lags more)."""
    eval_freq: int = 10_000
    """Evaluate every this many env steps (0 disables periodic evaluation)."""
    eval_episodes: int = 10
    """Episodes per evaluation, each on its own env with a fixed seed."""
    eval_deterministic: bool = True
    """Evaluate the mean action (True) or sample from the policy (False)."""
    eval_seed: int = 1_000_000
    """Evaluation episode i uses env seed ``eval_seed + i``: the same list at every evaluation."""
    checkpoint_freq: int = 25_000
    """Save a checkpoint every this many env steps (and always at the end)."""
    keep_checkpoints: int = 3
    """How many of the latest checkpoints to keep; ``best/`` is kept apart."""
    log_freq: int = 1_000
    """Write a progress.csv row every this many env steps."""
    video: bool = True
    """Write a GIF of the first evaluation episode whenever the best eval return improves."""
    progress_bar: bool = True
    """Show a tqdm progress bar (env steps/s, ETA from the recent rate, last eval return)."""
    tensorboard: bool = True
    """Also write every progress.csv and eval.csv row as TensorBoard scalars
    (``run_dir/tensorboard/progress``, ``run_dir/tensorboard/eval``; tensorboardX)."""

    def check(self) -> None:
        for name in ("total_timesteps", "n_envs", "utd", "update_every", "eval_episodes",
                     "checkpoint_freq", "keep_checkpoints", "log_freq"):
            value = getattr(self, name)
            self.require(value >= 1, name, f"must be >= 1, got {value}")
        self.require(self.learning_starts >= 0, "learning_starts",
                     f"must be >= 0, got {self.learning_starts}")
        self.require(self.eval_freq >= 0, "eval_freq", f"must be >= 0, got {self.eval_freq}")
        self.require(not self.tensorboard or importlib.util.find_spec("tensorboardX") is not None,
                     "tensorboard", "needs the tensorboardX package (pip install tensorboardX), "
                     "or set train.tensorboard=false")


@dataclasses.dataclass(frozen=True)
class PerfConfig(Validated):
    """Overrides of the execution plan (``dodgerl.train.plan``): how the loop runs, never what it
    computes. Every key left out (None) is chosen by the plan from the backend, the observation,
    ``n_envs`` and the cores; the plan of a run is printed at its start and written to
    ``plan.json``. docs/runs.md describes each choice."""

    PREFIX = "perf"

    async_envs: bool | None = None
    """Step the training envs in subprocesses instead of in this process."""
    envs_per_worker: int | None = None
    """With ``async_envs``: envs stepped in turn by each subprocess (divides ``train.n_envs``);
    also the most evaluation episodes one subprocess steps with ``eval_async_envs``."""
    overlap: bool | None = None
    """Queue each update before stepping the envs, so the envs step while the device computes
    (the actions then come from the agent one update call older). False: step, store, update,
    wait: the plain loop."""
    dispatch_thread: bool | None = None
    """With ``overlap``: make every device call on the agent and the replay mirror from one
    background thread, in the loop's order (same calls, same run), so that the loop's thread
    steps the envs while an update's kernels are being launched."""
    updates_in_flight: int | None = None
    """With the dispatch thread: 1 waits for the update in flight before queuing the next; 2
    queues the next behind it first (same run)."""
    device_mirror: bool | None = None
    """Keep a copy of the replay frames in accelerator memory and gather batches there; only
    indices cross to the device."""
    prefetch: int | None = None
    """Without the mirror: batches the background sampler keeps ready on the device."""
    sample_workers: int | None = None
    """Without the mirror: threads gathering the sampled frames."""
    writeback_s: float | None = None
    """Seconds between background writebacks of the buffer files' dirty pages (0: off), so that
    a checkpoint's commit finds little left to write."""
    eval_in_background: bool | None = None
    """Evaluate a copy of the agent in a background thread (on the CPU unless
    ``eval_on_device``) while training goes on; its row and ``best/`` come when it finishes."""
    eval_on_device: bool | None = None
    """With ``eval_in_background``: keep the evaluated copy on the training device."""
    eval_async_envs: bool | None = None
    """Step evaluation episodes 1, 2, ... in subprocesses (episode 0 here): same episodes."""
    eval_workers: int | None = None
    """Evaluate in this many spawned processes with CPU copies of the policy (0: in this
    process); excludes ``eval_async_envs``."""

    def check(self) -> None:
        for name in ("envs_per_worker", "prefetch", "sample_workers"):
            value = getattr(self, name)
            self.require(value is None or value >= 1, name, f"must be >= 1, got {value}")
        self.require(self.updates_in_flight in (None, 1, 2), "updates_in_flight",
                     f"must be 1 or 2, got {self.updates_in_flight}")
        self.require(self.writeback_s is None or (math.isfinite(self.writeback_s)
                                                  and self.writeback_s >= 0), "writeback_s",
                     f"must be a finite number >= 0 (0: off), got {self.writeback_s}")

    def check_with(self, train: TrainConfig) -> None:
        """The overrides that contradict the run's train section or each other (the plan
        resolves what they leave open)."""
        episodes = train.eval_episodes
        self.require(self.envs_per_worker is None or train.n_envs % self.envs_per_worker == 0,
                     "envs_per_worker", f"must divide train.n_envs ({train.n_envs}), got {self.envs_per_worker}")
        self.require(self.eval_workers is None or 0 <= self.eval_workers <= episodes, "eval_workers",
                     f"must be in [0, train.eval_episodes={episodes}], got {self.eval_workers}")
        self.require(not (self.eval_workers and self.eval_async_envs), "eval_workers",
                     "evaluation processes and perf.eval_async_envs exclude each other: set one")
        self.require(not self.eval_on_device or (self.eval_in_background is not False
                                                 and not self.eval_workers), "eval_on_device",
                     "needs perf.eval_in_background and no perf.eval_workers (it keeps the "
                     "background evaluation's copy on the training device)")


_SECTIONS = {"env": EnvConfig, "replay": ReplayConfig, "train": TrainConfig, "perf": PerfConfig}

MOVED_TO_PERF = {
    "replay": ("prefetch", "sample_workers", "device_mirror", "writeback_s"),
    "train": ("async_envs", "envs_per_worker", "overlap", "dispatch_thread", "updates_in_flight",
              "eval_in_background", "eval_on_device", "eval_async_envs", "eval_workers"),
}
"""Speed keys that earlier versions kept in ``replay:`` and ``train:``; they live in ``perf:``."""


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything a training run needs; ``config.yaml`` in the run directory is this, resolved."""

    experiment: str = "dodgerl"
    seed: int = 0
    env: EnvConfig = dataclasses.field(default_factory=EnvConfig)
    agent: Any = None  # dodgerl.agents.sac.SACConfig (imported lazily: JAX is slow to import)
    replay: ReplayConfig = dataclasses.field(default_factory=ReplayConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    perf: PerfConfig = dataclasses.field(default_factory=PerfConfig)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"experiment": self.experiment, "seed": self.seed}
        out["env"] = self.env.to_dict()
        for name in ("agent", "replay", "train"):
            out[name] = plain(dataclasses.asdict(getattr(self, name)))
        perf = {k: v for k, v in dataclasses.asdict(self.perf).items() if v is not None}
        if perf:  # only the overrides: the plan a run used is in its plan.json
            out["perf"] = perf
        return out

    def with_total_timesteps(self, total_timesteps: int) -> RunConfig:
        return dataclasses.replace(
            self, train=dataclasses.replace(self.train, total_timesteps=total_timesteps))


def _moved_speed_keys(raw: Mapping[str, Any], migrate: bool) -> dict[str, Any]:
    """``raw`` with earlier versions' speed keys moved into ``perf`` (``migrate``: a run
    directory's own config.yaml), or a ConfigError naming the first one found."""
    out = {k: dict(v) if isinstance(v, Mapping) else v for k, v in raw.items()}
    for section, names in MOVED_TO_PERF.items():
        values = out.get(section)
        if not isinstance(values, dict):
            continue
        for name in names:
            if name not in values:
                continue
            if not migrate:
                raise ConfigError(
                    f"{section}.{name}: a speed setting, now chosen by the machine's execution "
                    f"plan; to override it, set perf.{name} (docs/runs.md)")
            value = values.pop(name)
            if name in ("device_mirror", "dispatch_thread") and value == "auto":
                continue  # "auto" is what the plan does
            out.setdefault("perf", {})
            out["perf"] = {**out["perf"], name: value}
    return out


def config_from_dict(raw: Mapping[str, Any], migrate: bool = False) -> RunConfig:
    """Validate a nested mapping (as read from YAML) into a :class:`RunConfig`. ``migrate``
    moves the speed keys of earlier versions' configs into ``perf`` instead of rejecting them."""
    from dodgerl.agents.sac import SACConfig  # deferred: imports JAX

    if not isinstance(raw, Mapping):
        raise ConfigError(f"a config must be a mapping of sections, got {type(raw).__name__}")
    known = {"experiment", "seed", *_SECTIONS, "agent"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"unknown config key {unknown[0]!r} (top-level keys: {', '.join(sorted(known))})")
    raw = _moved_speed_keys(raw, migrate)
    sections = {name: build(cls, raw.get(name), name) for name, cls in _SECTIONS.items()}
    sections["perf"].check_with(sections["train"])
    agent = build(SACConfig, raw.get("agent"), "agent")
    experiment = coerce(raw.get("experiment", "dodgerl"), str, "experiment")
    seed = coerce(raw.get("seed", 0), int, "seed")
    check(experiment != "" and "/" not in experiment, "experiment",
          f"must be a non-empty name without '/', got {experiment!r}")
    return RunConfig(experiment=experiment, seed=seed, agent=agent, **sections)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse one ``--set section.key=value``; the value is read as YAML (``1e-4``, ``[64, 64]``)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. train.total_timesteps=20000")
    key, _, value_text = text.partition("=")
    key = key.strip()
    if not key or any(part == "" for part in key.split(".")):
        raise ConfigError(f"--set {text!r}: empty key")
    try:
        value = _yaml_load(value_text) if value_text.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {key}: cannot parse value {value_text!r}: {err}") from err
    return key.split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with each ``key=value`` override applied (validated later)."""
    out = yaml.safe_load(yaml.safe_dump(raw))  # deep copy of plain data
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {'.'.join(path)}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = _yaml_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return data


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config, apply ``key=value`` overrides and validate everything."""
    raw = apply_overrides(read_yaml(path), overrides or [])
    return config_from_dict(raw)


def save_config(config: RunConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


def load_run_config(run_dir: str | Path) -> RunConfig:
    """The resolved config of a run directory (``config.yaml``), earlier versions' included."""
    return config_from_dict(read_yaml(Path(run_dir) / "config.yaml"), migrate=True)
