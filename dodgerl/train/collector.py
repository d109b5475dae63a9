"""Collecting: the training envs stepped with the loop's actions, each transition into the replay.

The vector env resets an env in the step that ends its episode (same-step autoreset), so the
observation it returns for that env is the next episode's first; the transition stores the
episode's real final observation, from ``info['final_obs']``. Terminated and truncated are kept
apart: the replay bootstraps through a truncation, never through a termination.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from dodgerl.config import EnvConfig
from dodgerl.envs.make import single_frames


class Collector:
    """Steps ``envs``, stores what they return in ``replay``, and keeps episode statistics."""

    def __init__(self, envs: Any, replay: Any, env_config: EnvConfig, seeds: list[int]) -> None:
        self.envs = envs
        self.replay = replay
        self.env_config = env_config
        self.observations, _ = envs.reset(seed=seeds)
        n = envs.num_envs
        self._return = np.zeros(n)
        self._length = np.zeros(n, dtype=np.int64)
        self._finished_returns: list[float] = []
        self._finished_lengths: list[int] = []

    def step(self, actions: np.ndarray) -> tuple[int, float]:
        """Step every env once and store the transitions; returns the episodes that ended and
        the seconds the envs took."""
        t0 = time.perf_counter()
        next_obs, rewards, terminated, truncated, infos = self.envs.step(actions)
        env_s = time.perf_counter() - t0
        done = terminated | truncated
        final_obs = next_obs
        if done.any():
            final_obs = next_obs.copy()
            for i in np.flatnonzero(done):
                final_obs[i] = infos["final_obs"][i]
        ec = self.env_config
        self.replay.add(single_frames(self.observations, ec), actions, rewards,
                        single_frames(final_obs, ec), terminated, truncated)
        self.observations = next_obs
        self._return += rewards
        self._length += 1
        for i in np.flatnonzero(done):
            self._finished_returns.append(float(self._return[i]))
            self._finished_lengths.append(int(self._length[i]))
            self._return[i] = 0.0
            self._length[i] = 0
        return int(done.sum()), env_s

    def episode_stats(self) -> dict[str, Any]:
        """Mean return and length of the episodes finished since the last call ('' if none)."""
        returns, lengths = self._finished_returns, self._finished_lengths
        stats = {"train_return": np.mean(returns) if returns else "",
                 "train_length": np.mean(lengths) if lengths else ""}
        returns.clear()
        lengths.clear()
        return stats
