"""Many cheap envs over few processes: Gymnasium's AsyncVectorEnv with several envs per worker.

Gymnasium's ``AsyncVectorEnv`` runs one env per subprocess and pays a pipe round trip per env
and step. For an env whose step costs ~50-100 us (the dodge arena from its state vector), 128
envs then need 128 processes and the round trips cost more than the steps. Here each
subprocess runs an :class:`EnvGroup` of ``k`` envs, stepped one after another, which the
AsyncVectorEnv sees as one env with batched spaces (autoreset disabled there: the group resets
its own envs); :class:`GroupedAsyncVectorEnv` flattens the ``(groups, k)`` results back into
the standard vector-env API with same-step autoreset (the final observation of an episode in
``info["final_obs"]``, masked by ``info["_final_obs"]``), so it is a drop-in replacement for
``AsyncVectorEnv(..., autoreset_mode=SAME_STEP)``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium
import numpy as np
from gymnasium.vector import AsyncVectorEnv, AutoresetMode
from gymnasium.vector.utils import batch_space

_FINAL = "group_final_obs"


class EnvGroup(gymnasium.Env):
    """``len(env_fns)`` envs stepped in turn, as one env whose observations, actions, rewards
    and flags carry a leading axis of that size. Each env resets itself when its episode ends
    (same step); the group's info then holds the episode's final observations under
    ``group_final_obs`` (rows of envs that did not finish are zeros).

    ``reset(options={"seeds": [...]})`` takes the seeds of *all* groups of a vector env and
    uses its own slice (``index``): AsyncVectorEnv passes one seed per worker, not ``k``."""

    def __init__(self, env_fns: Sequence[Callable[[], gymnasium.Env]], index: int = 0) -> None:
        self.envs = [fn() for fn in env_fns]
        self.index = index
        first = self.envs[0]
        self.observation_space = batch_space(first.observation_space, len(self.envs))
        self.action_space = batch_space(first.action_space, len(self.envs))
        self.metadata = first.metadata

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        k = len(self.envs)
        seeds = (options or {}).get("seeds")
        if seeds is None:
            seeds = [None if seed is None else seed + i for i in range(k)]
        else:
            seeds = list(seeds)[self.index * k: (self.index + 1) * k]
        obs = np.stack([env.reset(seed=s)[0] for env, s in zip(self.envs, seeds)])
        return obs, {}

    def step(self, actions: np.ndarray):
        k = len(self.envs)
        obs = np.empty(self.observation_space.shape, self.observation_space.dtype)
        rewards = np.zeros(k)
        terminated = np.zeros(k, dtype=bool)
        truncated = np.zeros(k, dtype=bool)
        final = None
        for i, env in enumerate(self.envs):
            o, rewards[i], terminated[i], truncated[i], _ = env.step(actions[i])
            if terminated[i] or truncated[i]:
                if final is None:
                    final = np.zeros_like(obs)
                final[i] = o
                o, _ = env.reset()
            obs[i] = o
        info = {} if final is None else {_FINAL: final}
        return obs, rewards, terminated, truncated, info

    def close(self) -> None:
        for env in self.envs:
            env.close()


def _make_group(env_fn: Callable[[], gymnasium.Env], k: int, index: int) -> EnvGroup:
    return EnvGroup([env_fn] * k, index)


class GroupedAsyncVectorEnv(gymnasium.vector.VectorEnv):
    """``n_envs`` copies of ``env_fn`` in ``n_envs // envs_per_worker`` subprocesses (spawned),
    each stepping ``envs_per_worker`` of them in turn. Same-step autoreset, like the training
    loop's other vector envs. ``reset(seed=[...])`` gives env i seed ``seed[i]``."""

    def __init__(self, env_fn: Callable[[], gymnasium.Env], n_envs: int, envs_per_worker: int,
                 context: str = "spawn") -> None:
        if envs_per_worker < 1 or n_envs % envs_per_worker:
            raise ValueError(f"n_envs ({n_envs}) must be a positive multiple of envs_per_worker "
                             f"({envs_per_worker})")
        self.k = envs_per_worker
        self.groups = n_envs // envs_per_worker
        fns = [functools.partial(_make_group, env_fn, self.k, g) for g in range(self.groups)]
        self._async = AsyncVectorEnv(fns, autoreset_mode=AutoresetMode.DISABLED, context=context)
        probe = self._async.single_observation_space, self._async.single_action_space
        self.num_envs = n_envs
        self.single_observation_space = _unbatch(probe[0])
        self.single_action_space = _unbatch(probe[1])
        self.observation_space = batch_space(self.single_observation_space, n_envs)
        self.action_space = batch_space(self.single_action_space, n_envs)
        self.metadata = {**self._async.metadata, "autoreset_mode": AutoresetMode.SAME_STEP}
        self.render_mode = None

    def reset(self, *, seed: int | Sequence[int] | None = None, options: dict[str, Any] | None = None):
        if isinstance(seed, int):
            seed = [seed + i for i in range(self.num_envs)]
        if seed is not None and len(seed) != self.num_envs:
            raise ValueError(f"reset got {len(seed)} seeds for {self.num_envs} envs")
        obs, _ = self._async.reset(options={"seeds": None if seed is None else list(seed)})
        return obs.reshape(self.num_envs, *obs.shape[2:]), {}

    def step(self, actions: np.ndarray):
        self.step_async(actions)
        return self.step_wait()

    def step_async(self, actions: np.ndarray) -> None:
        """Send the actions; the workers step while this process does something else."""
        self._async.step_async(np.asarray(actions).reshape(self.groups, self.k, *self.single_action_space.shape))

    def step_wait(self):
        obs, rewards, terminated, truncated, infos = self._async.step_wait()
        n = self.num_envs
        obs = obs.reshape(n, *obs.shape[2:])
        terminated, truncated = terminated.reshape(n), truncated.reshape(n)
        info: dict[str, Any] = {}
        done = terminated | truncated
        if done.any():
            final = np.full(n, None, dtype=object)
            for i in np.flatnonzero(done):
                final[i] = infos[_FINAL][i // self.k][i % self.k]
            info = {"final_obs": final, "_final_obs": done.copy()}
        return obs, rewards.reshape(n), terminated, truncated, info

    def close_extras(self, **kwargs: Any) -> None:
        self._async.close(**kwargs)


def _unbatch(space: gymnasium.spaces.Box) -> gymnasium.spaces.Box:
    if not isinstance(space, gymnasium.spaces.Box):
        raise TypeError(f"env groups support Box spaces only, got {space}")
    return gymnasium.spaces.Box(space.low[0], space.high[0], dtype=space.dtype)
