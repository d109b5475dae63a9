"""Evaluation: episodes stepped in subprocesses give exactly what stepping them one by one gives."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from dodgerl.config import EnvConfig
from dodgerl.train import Evaluator, make_env


def row_policy(obs: np.ndarray, key: jax.Array) -> np.ndarray:
    """A deterministic policy computed row by row (so batching cannot change an action) that
    moves and survives for a while: some episodes end by a hit, others by truncation."""
    flat = obs.reshape(len(obs), -1).astype(np.float64)
    return np.stack([np.sin(flat[:, :7].sum(1)), np.cos(flat[:, 3:11].sum(1))], axis=1).astype(np.float32)


def one_episode(env_config: EnvConfig, seed: int, record: bool) -> tuple[float, int, list]:
    env = make_env(env_config, render_mode="rgb_array" if record else None)
    obs, _ = env.reset(seed=seed)
    total, length, frames = 0.0, 0, [env.render()] if record else []
    while True:
        obs, r, terminated, truncated, _ = env.step(row_policy(obs[None], None)[0])
        total += r
        length += 1
        if record:
            frames.append(env.render())
        if terminated or truncated:
            env.close()
            return total, length, frames


@pytest.mark.parametrize("obs_mode", ["vector", "topdown"])
@pytest.mark.parametrize("asynchronous,envs_per_worker", [(False, 1), (True, 1), (True, 3)],
                         ids=["in-process", "subprocesses", "two-episodes-per-subprocess"])
def test_evaluation_equals_each_episode_run_alone(obs_mode, asynchronous, envs_per_worker):
    env_config = EnvConfig(level=1, obs_mode=obs_mode, image_size=64, max_episode_steps=80)
    record = obs_mode == "topdown"
    evaluator = Evaluator(env_config, episodes=5, seed=40, record=record, asynchronous=asynchronous,
                          envs_per_worker=envs_per_worker)
    if envs_per_worker == 3:  # episodes 1-4: 2 subprocesses of 2 (2 is the largest divisor <= 3)
        assert evaluator.vector.groups == 2 and evaluator.vector.k == 2
    try:
        for _ in range(2):  # a second evaluation resets every env to the same episodes
            result = evaluator.run(row_policy, jax.random.PRNGKey(0))
            alone = [one_episode(env_config, 40 + i, record=record and i == 0) for i in range(5)]
            np.testing.assert_array_equal(result.returns, [a[0] for a in alone])
            np.testing.assert_array_equal(result.lengths, [a[1] for a in alone])
            if record:
                assert len(result.frames) == result.lengths[0] + 1
                np.testing.assert_array_equal(np.stack(result.frames), np.stack(alone[0][2]))
            else:
                assert result.frames == []
    finally:
        evaluator.close()
    # The episodes end at different steps, some by a hit and some by truncation, so finished
    # episodes (and, with subprocesses, envs that were reset) sat beside running ones.
    assert len(set(result.lengths.tolist())) > 1
    assert result.lengths.max() == 80 and result.lengths.min() < 80
