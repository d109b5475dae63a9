"""What a run builds before its loop: the agent for its envs, and its replay buffer."""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Any

import jax
import numpy as np

from dodgerl.config import RunConfig
from dodgerl.envs.make import observation_structure, single_frames
from dodgerl.train.plan import ExecutionPlan


def with_env_structure(config: RunConfig) -> RunConfig:
    """``config`` with the observation structure its env publishes (set layout, planar pairs)
    filled into the agent config where it leaves them out; config.yaml then records them.
    It makes the env once, so an env the agent cannot encode (``make.check_spaces``), an
    unknown id or a missing package fails here with a ConfigError, before the run directory
    is made."""
    from dodgerl.agents import sac

    structure = observation_structure(config.env)
    if structure is None:
        return config
    return dataclasses.replace(config, agent=sac.with_observation_structure(config.agent, structure))


def agent_for(envs: Any, config: RunConfig, key: jax.Array) -> Any:
    """A new SAC agent for the spaces of ``envs``."""
    from dodgerl.agents import sac

    return sac.create(key, envs.single_observation_space, envs.single_action_space, config.agent)


def checkpoint_bytes(agent: Any, keep: int) -> int:
    """Disk the run's checkpoints will take at most: ``keep`` kept, one being written, and
    best/, each the whole agent (parameters, targets, optimiser states)."""
    one = sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves(agent) if hasattr(leaf, "nbytes"))
    return one * (keep + 2)


def open_replay(run_dir: Path, config: RunConfig, plan: ExecutionPlan, envs: Any, agent: Any,
                cleanup: contextlib.ExitStack) -> Any:
    """The run's replay buffer (``run_dir/replay``), created or reopened in place; creating it
    warns when the disk cannot also hold the run's checkpoints. On an exception it is released
    uncommitted, so that it declares what the last checkpoint saw, as after a kill -9 (every
    clean path commits it with the final checkpoint)."""
    from dodgerl.replay import ReplayBuffer

    space = envs.single_observation_space
    frame_shape = single_frames(np.zeros(space.shape, space.dtype)[None], config.env).shape[1:]
    replay = ReplayBuffer(
        run_dir / "replay",
        capacity=config.replay.buffer_size,
        observation_shape=frame_shape,
        observation_dtype=space.dtype,
        action_dim=envs.single_action_space.shape[0],
        n_envs=config.train.n_envs,
        frame_stack=config.env.frame_stack,
        seed=config.seed,
        n_step=config.replay.n_step,
        gamma=config.agent.gamma,
        writeback_s=plan.writeback_s or None,
        extra_bytes=checkpoint_bytes(agent, config.train.keep_checkpoints),
    )
    cleanup.push(lambda exc_type, *_: replay.close(commit=exc_type is None))
    return replay
