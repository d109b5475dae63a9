"""Collecting: the training envs stepped with the loop's actions, each transition into the replay.

The vector env resets an env in the step that ends its episode (same-step autoreset), so the
observation it returns for that env is the next episode's first; the transition stores the
episode's real final observation, from ``info['final_obs']``. Terminated and truncated are kept
apart: the replay bootstraps through a truncation, never through a termination.

With several seeds in one process (``dodgerl.train.group``) one vector env steps every seed's
envs, seed i owning the i-th run of ``n_envs`` of them; each seed's transitions go to its own
replay, and its episode statistics are kept apart.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from dodgerl.config import EnvConfig
from dodgerl.envs.make import single_frames


class Collector:
    """Steps ``envs``, stores what they return in ``replays`` (one per seed, each fed by an
    equal, consecutive share of the envs), and keeps each seed's episode statistics."""

    def __init__(self, envs: Any, replays: list[Any], env_config: EnvConfig,
                 seeds: list[int]) -> None:
        self.envs = envs
        self.replays = list(replays)
        self.env_config = env_config
        n = envs.num_envs
        if n % len(self.replays):
            raise ValueError(f"{n} envs do not split evenly over {len(self.replays)} replays")
        self.per_replay = n // len(self.replays)
        self.observations, _ = envs.reset(seed=seeds)
        self._return = np.zeros(n)
        self._length = np.zeros(n, dtype=np.int64)
        self._finished: list[tuple[list[float], list[int]]] = [([], []) for _ in self.replays]

    def step(self, actions: np.ndarray) -> tuple[list[int], float]:
        """Step every env once and store the transitions; returns the episodes that ended, per
        replay, and the seconds the envs took."""
        t0 = time.perf_counter()
        next_obs, rewards, terminated, truncated, infos = self.envs.step(actions)
        env_s = time.perf_counter() - t0
        done = terminated | truncated
        final_obs = next_obs
        if done.any():
            final_obs = next_obs.copy()
            for i in np.flatnonzero(done):
                final_obs[i] = infos["final_obs"][i]
        ec, e = self.env_config, self.per_replay
        obs, final = single_frames(self.observations, ec), single_frames(final_obs, ec)
        for r, replay in enumerate(self.replays):
            part = slice(r * e, (r + 1) * e)
            replay.add(obs[part], actions[part], rewards[part], final[part], terminated[part],
                       truncated[part])
        self.observations = next_obs
        self._return += rewards
        self._length += 1
        for i in np.flatnonzero(done):
            returns, lengths = self._finished[i // e]
            returns.append(float(self._return[i]))
            lengths.append(int(self._length[i]))
            self._return[i] = 0.0
            self._length[i] = 0
        return [int(done[r * e:(r + 1) * e].sum()) for r in range(len(self.replays))], env_s

    def episode_stats(self, replay: int = 0) -> dict[str, Any]:
        """Mean return and length of the episodes of replay ``replay``'s envs finished since the
        last call ('' if none)."""
        returns, lengths = self._finished[replay]
        stats = {"train_return": np.mean(returns) if returns else "",
                 "train_length": np.mean(lengths) if lengths else ""}
        returns.clear()
        lengths.clear()
        return stats
