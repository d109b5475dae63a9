"""Env factories of a run: one env as the run config describes it (any registered Gymnasium env
the agent can encode, its spaces checked in one place), and its parallel vector env."""

from __future__ import annotations

import functools
import multiprocessing
import signal
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from dodgerl.config import DODGE_ID, ConfigError, EnvConfig

SUPPORTED = ("a Box observation (a 1-D float vector, or a uint8 (H, W, C) image) and a 1-D Box "
             "action space with finite bounds (rescaled to [-1, 1])")
"""What the agent can encode, as said in every unsupported-space error."""


def is_image_space(space: Any) -> bool:
    """A uint8 (H, W, C) Box: what NatureCNN encodes."""
    return (isinstance(space, spaces.Box) and space.dtype == np.uint8 and len(space.shape) == 3)


def check_spaces(env_id: str, observation_space: Any, action_space: Any) -> None:
    """A ConfigError naming the space of ``env_id`` that the agent cannot encode, and what it
    supports (Discrete actions, Dict observations, a non-uint8 image, unbounded actions)."""
    def fail(what: str, space: Any, why: str) -> None:
        raise ConfigError(f"env.id {env_id}: {what} {space} {why}; supported: {SUPPORTED}")

    if not isinstance(action_space, spaces.Box):
        fail("action space", action_space, f"is a {type(action_space).__name__}, not a Box")
    if len(action_space.shape) != 1:
        fail("action space", action_space, "is not 1-D")
    if not (np.all(np.isfinite(action_space.low)) and np.all(np.isfinite(action_space.high))):
        fail("action space", action_space, "has unbounded actions (cannot be rescaled to [-1, 1])")
    if not isinstance(observation_space, spaces.Box):
        fail("observation space", observation_space, f"is a {type(observation_space).__name__}, not a Box")
    shape, dtype = observation_space.shape, observation_space.dtype
    if len(shape) == 3 and dtype != np.uint8:
        fail("observation space", observation_space, f"is an image of {dtype}, not uint8")
    if len(shape) not in (1, 3) or (len(shape) == 1 and not np.issubdtype(dtype, np.number)):
        fail("observation space", observation_space, f"has shape {shape} of {dtype}")


def make_env(env_config: EnvConfig, render_mode: str | None = None) -> gymnasium.Env:
    """One env as the config describes it: ``gymnasium.make(env.id, **env.kwargs)`` (the dodge
    env with its own keys), its spaces checked (``check_spaces``), a float vector observation
    cast to float32, actions rescaled to [-1, 1] by Gymnasium's ``RescaleAction`` where the env's
    bounds are others, and frame-stacked if asked. Terminated and truncated are the env's own.
    ``render_mode`` is passed only where the env offers it (``renders_rgb``). A bad id or
    kwargs, a missing package or an unsupported space is a ConfigError naming it."""
    import dodgerl  # noqa: F401  (registers the dodge env)
    from dodgerl.envs.wrappers import FrameStack

    ec = env_config
    if ec.is_dodge:
        env = gymnasium.make(
            DODGE_ID,
            level=ec.level,
            obs_mode=ec.obs_mode,
            image_size=ec.image_size,
            action_space_type=ec.action_space_type,
            max_episode_steps=ec.max_episode_steps,
            render_mode=render_mode,
            **ec.kwargs,
        )
    else:
        env = _make_registered(ec, render_mode)
    try:
        check_spaces(ec.id, env.observation_space, env.action_space)
    except ConfigError:
        env.close()
        raise
    space = env.observation_space
    if len(space.shape) == 1 and space.dtype != np.float32:
        # The agent computes in float32 and the replay stores the observation's dtype: a
        # float64 vector (MuJoCo's) would double the buffer for no gain.
        # Gymnasium's TransformObservation with the float32 space built here: DtypeObservation
        # would warn that the bounds lose precision, which every MuJoCo env would print.
        low, high = (np.asarray(b, np.float32) for b in (space.low, space.high))
        env = gymnasium.wrappers.TransformObservation(
            env, functools.partial(np.asarray, dtype=np.float32),
            spaces.Box(low, high, space.shape, np.float32))
    action = env.action_space
    if not (np.all(action.low == -1.0) and np.all(action.high == 1.0)):
        # Bounds in the action space's own dtype: float64 bounds would be cast down, with a warning.
        low, high = (np.full(action.shape, v, action.dtype) for v in (-1.0, 1.0))
        env = gymnasium.wrappers.RescaleAction(env, low, high)
    if ec.frame_stack > 1:
        if not is_image_space(env.observation_space):
            env.close()
            raise ConfigError(f"env.frame_stack: frame stacking applies to image observations "
                              f"only; {ec.id} observes {env.observation_space}")
        env = FrameStack(env, ec.frame_stack)
    return env


def _make_registered(ec: EnvConfig, render_mode: str | None) -> gymnasium.Env:
    """``gymnasium.make`` of another env than the dodge one, its errors said as config errors."""
    extra: dict[str, Any] = {}
    if ec.max_episode_steps is not None:
        extra["max_episode_steps"] = ec.max_episode_steps
    if render_mode is not None and renders_rgb(ec):
        extra["render_mode"] = render_mode
    try:
        return gymnasium.make(ec.id, **ec.kwargs, **extra)
    except gymnasium.error.DependencyNotInstalled as err:
        hint = " (pip install -e '.[mujoco]')" if "mujoco" in str(err).lower() else ""
        raise ConfigError(f"env.id {ec.id}: a package it needs is missing: {err}{hint}") from err
    except gymnasium.error.Error as err:  # unregistered id, bad version, ...
        raise ConfigError(f"env.id {ec.id}: {err}") from err
    except TypeError as err:  # an argument the env does not take
        raise ConfigError(f"env.kwargs: {err}") from err


def renders_rgb(env_config: EnvConfig) -> bool:
    """Whether the env offers ``render_mode="rgb_array"`` (what the evaluation's GIF needs)."""
    if env_config.is_dodge:
        return True
    try:
        spec = gymnasium.spec(env_config.id)
    except gymnasium.error.Error:
        return False
    creator = spec.entry_point
    if isinstance(creator, str):
        try:
            creator = gymnasium.envs.registration.load_env_creator(creator)
        except Exception:  # noqa: BLE001  (make_env reports what is wrong with the env)
            return False
    metadata = getattr(creator, "metadata", None)
    return isinstance(metadata, dict) and "rgb_array" in metadata.get("render_modes", ())


def image_side(env_config: EnvConfig) -> int | None:
    """The larger side of an image observation, None for a vector: what the execution plan
    keys on. The dodge env's is in its config; another env is made once to see it."""
    if env_config.is_dodge:
        return env_config.image_size if env_config.obs_mode == "topdown" else None
    env = make_env(env_config)
    try:
        space = env.observation_space
        return max(space.shape[:2]) if is_image_space(space) else None
    finally:
        env.close()


def episode_horizon(env_config: EnvConfig) -> int | None:
    """Steps after which an episode is truncated: ``env.max_episode_steps``, else the limit the
    env is registered with (None where it has none)."""
    if env_config.max_episode_steps is not None:
        return env_config.max_episode_steps
    try:
        return gymnasium.spec(env_config.id).max_episode_steps
    except gymnasium.error.Error:
        return None


def make_worker_env(env_config: EnvConfig) -> gymnasium.Env:
    """``make_env`` inside an env subprocess, which leaves SIGINT and SIGTERM to the training
    process: Ctrl-C in a terminal (and ``timeout``, ``kill -- -PGID``) signals the whole process
    group, and a worker that died on it would break the checkpoint-and-exit of the main process.
    The main process closes the workers itself; if it dies, they exit on the closed pipe.
    AsyncVectorEnv also calls this once in the main process (a probe env for the spaces), whose
    handlers must stay as they are."""
    if multiprocessing.parent_process() is not None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return make_env(env_config)


def make_vector_env(env_config: EnvConfig, n_envs: int, asynchronous: bool,
                    envs_per_worker: int = 1) -> gymnasium.vector.VectorEnv:
    """Parallel training envs; the final observation of an episode comes in ``info['final_obs']``
    on the step that ends it (same-step autoreset), so no transition crosses an episode. With
    ``asynchronous``, subprocesses step them, ``envs_per_worker`` envs each."""
    if asynchronous and n_envs > 1 and envs_per_worker > 1:
        from dodgerl.envs.grouped import GroupedAsyncVectorEnv

        return GroupedAsyncVectorEnv(functools.partial(make_worker_env, env_config), n_envs, envs_per_worker)
    mode = gymnasium.vector.AutoresetMode.SAME_STEP
    if asynchronous and n_envs > 1:
        # Spawned, not forked: forking a process whose JAX runtime has started can deadlock.
        fns = [functools.partial(make_worker_env, env_config) for _ in range(n_envs)]
        return gymnasium.vector.AsyncVectorEnv(fns, autoreset_mode=mode, context="spawn")
    fns = [functools.partial(make_env, env_config) for _ in range(n_envs)]
    return gymnasium.vector.SyncVectorEnv(fns, autoreset_mode=mode)


def single_frames(observations: np.ndarray, env_config: EnvConfig) -> np.ndarray:
    """The newest frame of each (possibly frame-stacked) observation: what the replay stores.
    Frames are stacked on the channel axis, oldest first (``FrameStack``; images only)."""
    if env_config.frame_stack > 1:
        channels = observations.shape[-1] // env_config.frame_stack
        return observations[..., -channels:]
    return observations


def observation_structure(env_config: EnvConfig) -> Any:
    """The observation structure the env publishes (``observation_structure`` of the unwrapped
    env: set layout, planar pairs), or None where it publishes none. Only dodgerl's
    ``ObservationStructure`` counts: Gymnasium's MuJoCo envs have an attribute of that name too
    (a dict of their qpos/qvel sizes), which says nothing the agent uses."""
    from dodgerl.envs.structure import ObservationStructure

    env = make_env(env_config)
    try:
        structure = getattr(env.unwrapped, "observation_structure", None)
        return structure if isinstance(structure, ObservationStructure) else None
    finally:
        env.close()
