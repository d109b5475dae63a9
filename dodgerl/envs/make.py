"""Env factories of a run: one env as the run config describes it, and its parallel vector env."""

from __future__ import annotations

import functools
import multiprocessing
import signal

import gymnasium
import numpy as np
from typing import Any

from dodgerl.config import EnvConfig


def make_env(env_config: EnvConfig, render_mode: str | None = None) -> gymnasium.Env:
    """One ``dodgerl/Dodge-v0`` env as the config describes it, frame-stacked if asked."""
    import dodgerl  # noqa: F401  (registers the env)
    from dodgerl.envs.wrappers import FrameStack

    env = gymnasium.make(
        "dodgerl/Dodge-v0",
        level=env_config.level,
        obs_mode=env_config.obs_mode,
        image_size=env_config.image_size,
        action_space_type=env_config.action_space_type,
        max_episode_steps=env_config.max_episode_steps,
        render_mode=render_mode,
    )
    if env_config.frame_stack > 1:
        env = FrameStack(env, env_config.frame_stack)
    return env


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
    """The newest frame of each (possibly frame-stacked) observation: what the replay stores."""
    if env_config.obs_mode == "topdown" and env_config.frame_stack > 1:
        return observations[..., -3:]
    return observations




def observation_structure(env_config: EnvConfig) -> Any:
    """The observation structure the env publishes (``observation_structure`` of the unwrapped
    env: set layout, planar pairs), or None where it publishes none."""
    env = make_env(env_config)
    try:
        return getattr(env.unwrapped, "observation_structure", None)
    finally:
        env.close()
