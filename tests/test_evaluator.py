"""Evaluation: episodes stepped in subprocesses give exactly what stepping them one by one gives."""

from __future__ import annotations

import os
import signal

import jax
import numpy as np
import pytest
from flax import struct

from dodgerl.config import EnvConfig
from dodgerl.envs.make import make_env
from dodgerl.episodes import Evaluator, write_gif
from dodgerl.train.eval_processes import EvalProcesses


def row_policy(obs: np.ndarray, key: jax.Array) -> np.ndarray:
    """A deterministic policy computed row by row (so batching cannot change an action) that
    moves and survives for a while: some episodes end by a hit, others by truncation."""
    flat = obs.reshape(len(obs), -1).astype(np.float64)
    return np.stack([np.sin(flat[:, :7].sum(1)), np.cos(flat[:, 3:11].sum(1))], axis=1).astype(np.float32)


class RowPolicy(struct.PyTreeNode):
    """``row_policy`` as the policy object evaluation processes receive (picklable, a pytree)."""

    fail: bool = struct.field(pytree_node=False, default=False)

    def act(self, obs: np.ndarray, key: jax.Array, deterministic: bool = False) -> np.ndarray:
        if self.fail:
            raise ValueError("this policy cannot act")
        return row_policy(np.asarray(obs), key)


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


@pytest.mark.parametrize("obs_mode", ["vector", "topdown"])
def test_evaluation_processes_equal_each_episode_run_alone(obs_mode, tmp_path):
    """Episodes split over two evaluation processes (blocks of 2 and 3) come back in order, equal
    to running each episode alone, twice; worker 0 writes the GIF of episode 0 that the frames
    of running it alone give (byte for byte)."""
    env_config = EnvConfig(level=1, obs_mode=obs_mode, image_size=64, max_episode_steps=80)
    record = obs_mode == "topdown"
    evaluator = EvalProcesses(env_config, episodes=5, seed=40, record=record, workers=2)
    alone = [one_episode(env_config, 40 + i, record=record and i == 0) for i in range(5)]
    try:
        for i in range(2):
            evaluator.submit(RowPolicy(), jax.random.PRNGKey(0), deterministic=True)
            result = evaluator.collect()
            np.testing.assert_array_equal(result.returns, [a[0] for a in alone])
            np.testing.assert_array_equal(result.lengths, [a[1] for a in alone])
            assert result.frames == []  # they stay in the worker
            assert evaluator.last_seconds > 0
            if record:
                evaluator.write_video(tmp_path / f"eval{i}.gif")
    finally:
        evaluator.close()  # waits for the GIFs asked for
    assert len(set(result.lengths.tolist())) > 1
    if record:
        write_gif(alone[0][2], tmp_path / "alone.gif")
        expected = (tmp_path / "alone.gif").read_bytes()
        assert (tmp_path / "eval0.gif").read_bytes() == expected
        assert (tmp_path / "eval1.gif").read_bytes() == expected
    assert all(not p.is_alive() for p in evaluator.processes)


def test_evaluation_process_failures_are_reported(tmp_path, capfd):
    env_config = EnvConfig(level=1, obs_mode="vector", max_episode_steps=20)
    evaluator = EvalProcesses(env_config, episodes=3, seed=0, record=False, workers=3)
    try:
        with pytest.raises(RuntimeError, match="at most one|collect the evaluation in flight"):
            evaluator.submit(RowPolicy(), jax.random.PRNGKey(0), True)
            evaluator.submit(RowPolicy(), jax.random.PRNGKey(0), True)
        evaluator.collect()
        # An exception inside a worker comes back with its traceback.
        evaluator.submit(RowPolicy(fail=True), jax.random.PRNGKey(0), True)
        with pytest.raises(RuntimeError, match=r"(?s)evaluation worker 0 failed.*this policy cannot act"):
            evaluator.collect()
    finally:
        evaluator.close()
    # A GIF that cannot be written (its directory would be a file) is a warning; evaluation goes on.
    evaluator = EvalProcesses(EnvConfig(level=1, obs_mode="topdown", image_size=64, max_episode_steps=20),
                              episodes=2, seed=0, record=True, workers=2)
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("")
    try:
        for _ in range(2):
            evaluator.submit(RowPolicy(), jax.random.PRNGKey(0), True)
            assert len(evaluator.collect().returns) == 2
            evaluator.write_video(blocker / "x.gif")
    finally:
        evaluator.close()
    assert "could not write" in capfd.readouterr().err
    # A worker that dies is named instead of leaving the caller waiting forever.
    evaluator = EvalProcesses(env_config, episodes=2, seed=0, record=False, workers=2)
    try:
        os.kill(evaluator.processes[1].pid, signal.SIGKILL)
        evaluator.processes[1].join()
        with pytest.raises(RuntimeError, match="evaluation worker 1 died"):
            evaluator.submit(RowPolicy(), jax.random.PRNGKey(0), True)
            evaluator.collect()
    finally:
        evaluator.close()
    with pytest.raises(ValueError, match="workers must be in"):
        EvalProcesses(env_config, episodes=2, seed=0, record=False, workers=3)


def test_evaluation_processes_act_with_a_sac_policy():
    """A real SAC policy travels to the workers: deterministic evaluations equal the in-process
    ones; stochastic ones are reproducible for a key and change with it."""
    from dodgerl.agents import sac

    env_config = EnvConfig(level=1, obs_mode="vector", max_episode_steps=50)
    env = make_env(env_config)
    agent = sac.create(jax.random.PRNGKey(0), env.observation_space, env.action_space,
                       sac.SACConfig(net_arch=(32, 32)))
    env.close()
    here = Evaluator(env_config, episodes=4, seed=7, record=False)
    expected = here.run(lambda o, k: agent.act(o, k, deterministic=True), jax.random.PRNGKey(1))
    here.close()
    evaluator = EvalProcesses(env_config, episodes=4, seed=7, record=False, workers=2)
    try:
        evaluator.submit(agent.policy(), jax.random.PRNGKey(1), deterministic=True)
        result = evaluator.collect()
        np.testing.assert_array_equal(result.returns, expected.returns)
        np.testing.assert_array_equal(result.lengths, expected.lengths)
        sampled = []
        for seed in (5, 5, 6):
            evaluator.submit(agent.policy(), jax.random.PRNGKey(seed), deterministic=False)
            sampled.append(evaluator.collect())
    finally:
        evaluator.close()
    np.testing.assert_array_equal(sampled[0].returns, sampled[1].returns)
    np.testing.assert_array_equal(sampled[0].lengths, sampled[1].lengths)
    assert not (np.array_equal(sampled[0].returns, sampled[2].returns)
                and np.array_equal(sampled[0].lengths, sampled[2].lengths))
