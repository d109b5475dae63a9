"""Run configuration: YAML -> frozen dataclasses, ``--set`` overrides, validation at load time.

A run config has four sections and two top-level keys::

    experiment: sac_topdown_cnn_easy   # results/<experiment>/<timestamp>/
    seed: 0
    env:    {...}   # EnvConfig: which arena, which observation
    agent:  {...}   # dodgerl.agents.sac.SACConfig: the learner
    replay: {...}   # ReplayConfig: the on-disk buffer
    train:  {...}   # TrainConfig: the loop (budget, warm-up, evaluation, checkpoints)

Every key is checked when the file is loaded, before any env or device work: an unknown key,
a value of the wrong type or an invalid value raises :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Mapping

import yaml


class ConfigError(ValueError):
    """A configuration key is unknown, has the wrong type, or an invalid value."""


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-3`` (no dot) as a string; researchers write it as a number."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)


@dataclasses.dataclass(frozen=True)
class EnvConfig:
    """Which arena, and what the agent sees of it."""

    level: int = 1
    """Difficulty level of ``dodgerl/Dodge-v0`` (1, 2 or 3)."""
    obs_mode: str = "topdown"
    """``vector`` (65-dim state) or ``topdown`` (uint8 RGB image)."""
    image_size: int = 256
    """Side of the square image in pixels (64..256); ignored for ``vector``."""
    action_space_type: str = "basic"
    """``basic`` (2-dim desired velocity) or ``dash`` (adds a dash trigger)."""
    frame_stack: int = 1
    """Number of most recent frames stacked on the channel axis (images only)."""
    max_episode_steps: int = 1000
    """Episodes are truncated after this many steps."""

    def validate(self) -> None:
        _check(self.level in (1, 2, 3), "env.level", f"must be 1, 2 or 3, got {self.level!r}")
        _check(self.obs_mode in ("vector", "topdown"), "env.obs_mode",
               f"must be 'vector' or 'topdown', got {self.obs_mode!r}")
        _check(64 <= self.image_size <= 256, "env.image_size",
               f"must be in 64..256, got {self.image_size}")
        _check(self.action_space_type in ("basic", "dash"), "env.action_space_type",
               f"must be 'basic' or 'dash', got {self.action_space_type!r}")
        _check(self.frame_stack >= 1, "env.frame_stack", f"must be >= 1, got {self.frame_stack}")
        _check(self.frame_stack == 1 or self.obs_mode == "topdown", "env.frame_stack",
               "frame stacking applies to image observations only (env.obs_mode: topdown)")
        _check(self.max_episode_steps >= 1, "env.max_episode_steps",
               f"must be >= 1, got {self.max_episode_steps}")


@dataclasses.dataclass(frozen=True)
class ReplayConfig:
    """The on-disk replay buffer (``<run_dir>/replay``)."""

    buffer_size: int = 100_000
    """Capacity in transitions (split evenly between the parallel envs)."""
    prefetch: int = 2
    """Batches the background sampler keeps ready on the device."""
    sample_workers: int = 1
    """Sampling threads; several overlap the frame gathers of large image batches."""
    device_mirror: bool | str = "auto"
    """Keep a copy of the replay frames in accelerator memory and build batches there
    (``DeviceMirror``): only indices cross to the device. ``auto``: on when JAX runs on an
    accelerator (GPU/TPU) and the copy fits, off on the CPU (where it would only double the RAM).
    With the mirror, ``prefetch`` and ``sample_workers`` are unused."""
    n_step: int = 1
    """n-step returns: each sampled transition sums up to ``n_step`` discounted rewards of its
    episode and bootstraps from the observation that many steps later (``ReplayBuffer``'s
    ``n_step``; the discount is ``agent.gamma``). 1 = plain one-step SAC."""
    writeback_s: float = 2.0
    """Seconds between background writebacks of the buffer files' dirty pages (``fsync`` in a
    thread), so that a checkpoint's commit finds little left to write (docs/perf_notes.md v11);
    0 = off: the kernel writes them back on its own schedule and the commit writes the rest."""

    def validate(self) -> None:
        _check(self.device_mirror in (True, False, "auto"), "replay.device_mirror",
               f"must be true, false or auto, got {self.device_mirror!r}")
        _check(self.buffer_size >= 2, "replay.buffer_size", f"must be >= 2, got {self.buffer_size}")
        _check(self.prefetch >= 1, "replay.prefetch", f"must be >= 1, got {self.prefetch}")
        _check(self.sample_workers >= 1, "replay.sample_workers",
               f"must be >= 1, got {self.sample_workers}")
        _check(self.n_step >= 1, "replay.n_step", f"must be >= 1, got {self.n_step}")
        _check(math.isfinite(self.writeback_s) and self.writeback_s >= 0, "replay.writeback_s",
               f"must be a finite number >= 0 (0: off), got {self.writeback_s}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The training loop: budget, warm-up, update ratio, evaluation, logging, checkpoints."""

    total_timesteps: int = 500_000
    """Env steps (summed over parallel envs) after which the run stops."""
    learning_starts: int = 5_000
    """Env steps of uniform random actions before the first gradient step."""
    n_envs: int = 1
    """Parallel training envs (a Gymnasium vector env)."""
    async_envs: bool = False
    """Step the parallel envs in subprocesses (AsyncVectorEnv) instead of in this process."""
    envs_per_worker: int = 1
    """With ``async_envs``: envs stepped in turn by each subprocess (``n_envs`` must be a
    multiple). Above 1, fewer processes and pipe round trips per step: for many cheap envs
    (vector observations), e.g. 128 envs as 16 processes of 8. With ``eval_async_envs``, also
    the most evaluation episodes one subprocess steps."""
    utd: int = 1
    """Gradient steps per env step (update-to-data ratio); all of one vector step's updates run
    in one compiled call (``utd * n_envs`` stacked batches)."""
    update_every: int = 1
    """Vector-env steps between update calls; each call then runs ``utd * n_envs * update_every``
    gradient steps (same ratio, fewer and larger compiled calls)."""
    overlap: bool = True
    """Dispatch each update before stepping the envs, so that the envs step while the device
    computes (JAX dispatch is asynchronous). The actions of the next vector step are then queued
    before this step's update, so they come from the agent one update call older. False: step,
    store, then update and wait."""
    dispatch_thread: bool | str = "auto"
    """With ``overlap``: make the loop's device calls on the agent and the replay mirror (mirror
    uploads, act, the batch indices' upload, update) from one background thread, in the loop's
    order, so that the loop's thread steps the envs and writes the replay while an update's
    kernels are being launched. On a GPU, launching an update call holds the calling thread
    about as long as the device takes to run it (H200, 84x84, 16 steps per call: 7.5 of 8.0 ms;
    docs/perf_notes.md v10). Same calls in the same order: same run. ``auto``: on for image
    observations when JAX runs on an accelerator (+23-27% env steps/s end to end there); off for
    vector observations (no gain measured) and on a CPU (calls return at once; the thread only
    competes for the cores). Ignored without ``overlap``."""
    updates_in_flight: int = 1
    """With ``overlap`` and the dispatch thread: 1 waits for the update in flight before queuing
    the next; 2 queues the next behind it first, then waits for it, so the device goes from one
    update to the next without waiting for the loop's thread (the actions are queued before the
    update either way: same run). H200, 256x256 bf16, 16 envs, evaluation off: 988 -> 1,118
    env steps/s, the update's own rate (docs/perf_notes.md v10b); 2 in the 256x256 configs.
    Without the dispatch thread it acts as 1 (measured there: no gain at 256x256, -17% at
    84x84)."""
    eval_freq: int = 10_000
    """Evaluate every this many env steps (0 disables periodic evaluation)."""
    eval_episodes: int = 10
    """Episodes per evaluation, each on its own env with a fixed seed."""
    eval_deterministic: bool = True
    """Evaluate the mean action (True) or sample from the policy (False)."""
    eval_seed: int = 1_000_000
    """Evaluation episode i uses env seed ``eval_seed + i``: the same list at every evaluation."""
    eval_in_background: bool = False
    """Evaluate a copy of the agent on the CPU (unless ``eval_on_device``) in a background thread
    while training goes on (at most one evaluation in flight; its row and ``best/`` are those of
    the step it copied, and are written when it finishes; a checkpoint waits for it, except the
    checkpoint of its own step, which is saved before it starts and on resume runs it again
    first). Worth it when the policy is small
    (vector observations) and the accelerator is busy with updates: acting then neither waits
    for them nor stops the loop. Image policies act slowly on a CPU."""
    eval_on_device: bool = False
    """With ``eval_in_background``: keep the evaluated copy on the training device (the
    accelerator) instead of the CPU, so that an image policy acts on the accelerator (one
    batched act per step for all episodes, each queued behind the updates already queued) while
    the loop goes on. Same results as evaluating in the loop. Meant for 256x256 images: on an
    H200 (16 envs, bf16, with ``eval_async_envs``) evaluation cost the loop 18 ms per 1000 env
    steps this way against 80 in the loop, 1,011 vs 982 env steps/s over 50K steps in one run
    (935-1,011 over five runs, median 988; docs/perf_notes.md v11). If an evaluation outlasts ``eval_freq`` env steps, the next one
    waits for it."""
    eval_async_envs: bool = False
    """Step evaluation episodes 1, 2, ... in subprocesses (episode 0 in this process, beside
    them): an evaluation then takes about one episode's env time instead of ``eval_episodes``
    episodes'. Same episodes and results as in-process; worth it when env steps are costly
    (images) and cores are free."""
    eval_workers: int = 0
    """Evaluate in this many spawned processes (episodes split between them), each acting with
    a CPU copy of the policy on its own JAX runtime, instead of in the training process (0).
    Unlike the ``eval_in_background`` thread, workers share neither the training process's GIL
    nor its cores' time slices; with ``eval_in_background`` the loop goes on while they run, else
    it waits for them. Deterministic evaluations act as in-process ones on a CPU (training on an
    accelerator can differ from them in the last bits, and episodes with it). Each worker
    costs a process with JAX (a few hundred MB) and receives the policy's parameters at every
    evaluation: meant for policies that act fast on a CPU (vector observations, 84x84 images; a
    256x256 NatureCNN takes ~17 ms per CPU act, ~47 ms with ``bf16_encoder``). Excludes
    ``eval_async_envs``."""
    checkpoint_freq: int = 25_000
    """Save a checkpoint every this many env steps (and always at the end)."""
    keep_checkpoints: int = 3
    """How many of the latest checkpoints to keep; ``best/`` is kept apart."""
    log_freq: int = 1_000
    """Write a progress.csv row every this many env steps."""
    video: bool = True
    """Write a GIF of the first evaluation episode whenever the best eval return improves."""
    progress_bar: bool = True
    """Show a tqdm progress bar (env steps/s, ETA, last eval return)."""

    def validate(self) -> None:
        for key in ("total_timesteps", "n_envs", "envs_per_worker", "utd", "update_every", "eval_episodes", "checkpoint_freq",
                    "keep_checkpoints", "log_freq"):
            value = getattr(self, key)
            _check(value >= 1, f"train.{key}", f"must be >= 1, got {value}")
        _check(self.learning_starts >= 0, "train.learning_starts",
               f"must be >= 0, got {self.learning_starts}")
        _check(self.eval_freq >= 0, "train.eval_freq", f"must be >= 0, got {self.eval_freq}")
        _check(self.updates_in_flight in (1, 2), "train.updates_in_flight",
               f"must be 1 or 2, got {self.updates_in_flight}")
        _check(self.dispatch_thread in (True, False, "auto"), "train.dispatch_thread",
               f"must be true, false or auto, got {self.dispatch_thread!r}")
        _check(0 <= self.eval_workers <= self.eval_episodes, "train.eval_workers",
               f"must be in [0, train.eval_episodes={self.eval_episodes}], got {self.eval_workers}")
        _check(not self.eval_on_device or (self.eval_in_background and not self.eval_workers),
               "train.eval_on_device", "needs train.eval_in_background and no train.eval_workers "
               "(it keeps the background evaluation's copy on the training device)")
        _check(not (self.eval_workers and self.eval_async_envs), "train.eval_workers",
               "evaluation processes and train.eval_async_envs exclude each other: set one")
        _check(self.n_envs % self.envs_per_worker == 0, "train.envs_per_worker",
               f"must divide train.n_envs ({self.n_envs}), got {self.envs_per_worker}")


_SECTIONS = {"env": EnvConfig, "replay": ReplayConfig, "train": TrainConfig}


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything a training run needs; ``config.yaml`` in the run directory is this, resolved."""

    experiment: str = "dodgerl"
    seed: int = 0
    env: EnvConfig = dataclasses.field(default_factory=EnvConfig)
    agent: Any = None  # dodgerl.agents.sac.SACConfig (imported lazily: JAX is slow to import)
    replay: ReplayConfig = dataclasses.field(default_factory=ReplayConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"experiment": self.experiment, "seed": self.seed}
        for name in ("env", "agent", "replay", "train"):
            out[name] = _plain(dataclasses.asdict(getattr(self, name)))
        return out


def _plain(value: Any) -> Any:
    """Tuples become lists so that YAML round-trips with safe_load."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check ``value`` against a field annotation; ints are accepted for floats, lists for tuples."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = typing.get_args(annotation)
        item_type = args[0] if args else Any
        return tuple(_coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value))
    if annotation is Any:
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    return value


def build_dataclass(cls: type, values: Mapping[str, Any] | None, prefix: str) -> Any:
    """Build a frozen dataclass from a mapping, naming unknown keys and ill-typed values."""
    values = dict(values or {})
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix}: expected a mapping of keys, got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(
            f"unknown config key {prefix}.{unknown[0]} (valid keys in '{prefix}': {', '.join(sorted(fields))})"
        )
    kwargs = {k: _coerce(v, hints[k], f"{prefix}.{k}") for k, v in values.items()}
    return cls(**kwargs)


def config_from_dict(raw: Mapping[str, Any]) -> RunConfig:
    """Validate a nested mapping (as read from YAML) into a :class:`RunConfig`."""
    from dodgerl.agents.sac import SACConfig  # deferred: imports JAX

    if not isinstance(raw, Mapping):
        raise ConfigError(f"a config must be a mapping of sections, got {type(raw).__name__}")
    known = {"experiment", "seed", *_SECTIONS, "agent"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"unknown config key {unknown[0]!r} (top-level keys: {', '.join(sorted(known))})")
    sections = {name: build_dataclass(cls, raw.get(name), name) for name, cls in _SECTIONS.items()}
    for section in sections.values():
        section.validate()
    try:
        agent = SACConfig.from_dict(dict(raw.get("agent") or {}))
    except (ValueError, TypeError) as err:
        raise ConfigError(f"agent: {err}") from err
    experiment = _coerce(raw.get("experiment", "dodgerl"), str, "experiment")
    seed = _coerce(raw.get("seed", 0), int, "seed")
    _check(experiment != "" and "/" not in experiment, "experiment",
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
