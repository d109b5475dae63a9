"""Several envs per subprocess: the same transitions as one process stepping every env."""

from __future__ import annotations

import functools
import signal

import gymnasium
import numpy as np
import pytest

from dodgerl.config import ConfigError, EnvConfig, config_from_dict
from dodgerl.envs.grouped import GroupedAsyncVectorEnv
from dodgerl.envs.make import make_env, make_vector_env


@pytest.mark.parametrize("obs_mode", ["vector", "topdown"])
def test_grouped_envs_step_exactly_like_one_process(obs_mode):
    env_config = EnvConfig(level=2, obs_mode=obs_mode, image_size=64, max_episode_steps=25)
    n = 6
    grouped = make_vector_env(env_config, n, asynchronous=True, envs_per_worker=3)
    plain = make_vector_env(env_config, n, asynchronous=False)
    assert isinstance(grouped, GroupedAsyncVectorEnv) and grouped.groups == 2
    assert grouped.single_observation_space == plain.single_observation_space
    assert grouped.single_action_space == plain.single_action_space
    assert grouped.observation_space.shape == plain.observation_space.shape
    rng = np.random.default_rng(0)
    try:
        seeds = [17 + 5 * i for i in range(n)]
        obs_g, _ = grouped.reset(seed=seeds)
        obs_p, _ = plain.reset(seed=seeds)
        np.testing.assert_array_equal(obs_g, obs_p)
        ended = np.zeros(n, dtype=int)
        for _ in range(80):
            actions = rng.uniform(-1, 1, size=plain.action_space.shape).astype(np.float32)
            g = grouped.step(actions)
            p = plain.step(actions)
            for a, b in zip(g[:4], p[:4]):
                np.testing.assert_array_equal(a, b)
            done = p[2] | p[3]
            np.testing.assert_array_equal(g[4].get("_final_obs", np.zeros(n, bool)), done)
            for i in np.flatnonzero(done):
                np.testing.assert_array_equal(g[4]["final_obs"][i], p[4]["final_obs"][i])
            ended += done
    finally:
        grouped.close()
        plain.close()
    # Episodes ended (by hits and by the 25-step truncation), in both groups, several times.
    assert ended[:3].sum() >= 3 and ended[3:].sum() >= 3 and ended.min() >= 1


def test_envs_per_worker_must_divide_n_envs():
    with pytest.raises(ValueError, match="multiple of envs_per_worker"):
        GroupedAsyncVectorEnv(functools.partial(make_env, EnvConfig(obs_mode="vector")), 6, 4)
    with pytest.raises(ConfigError, match="perf.envs_per_worker"):
        config_from_dict({"train": {"n_envs": 6}, "perf": {"envs_per_worker": 4}})
    with pytest.raises(ConfigError, match="perf.envs_per_worker"):
        config_from_dict({"perf": {"envs_per_worker": 0}})


def test_grouped_reset_rejects_a_wrong_number_of_seeds():
    envs = GroupedAsyncVectorEnv(functools.partial(make_env, EnvConfig(obs_mode="vector")), 4, 2)
    try:
        with pytest.raises(ValueError, match="3 seeds for 4 envs"):
            envs.reset(seed=[1, 2, 3])
        obs, _ = envs.reset(seed=10)  # an int seeds env i with 10 + i
        one = gymnasium.make("dodgerl/Dodge-v0", obs_mode="vector")
        np.testing.assert_array_equal(obs[2], one.reset(seed=12)[0])
    finally:
        envs.close()


@pytest.mark.parametrize("envs_per_worker", [1, 2])
def test_making_env_subprocesses_leaves_this_process_signal_handlers_alone(envs_per_worker):
    # AsyncVectorEnv builds one env in this process to read the spaces; the workers ignore
    # SIGINT/SIGTERM (the training process handles them), this process must not. The test sets
    # Python's own handlers first: a shell that starts pytest in the background (`cmd &` in a
    # script) leaves SIGINT ignored, and then an ignoring worker setup could not show.
    inherited = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    envs = make_vector_env(EnvConfig(obs_mode="vector"), 4, asynchronous=True, envs_per_worker=envs_per_worker)
    try:
        assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
        assert before[0] is signal.default_int_handler
    finally:
        envs.close()
        signal.signal(signal.SIGINT, inherited[0])
        signal.signal(signal.SIGTERM, inherited[1])
