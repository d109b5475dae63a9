"""Tests of FrameStack: shape, oldest-first channel order, reset repetition, no aliasing between steps."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest
from gymnasium import spaces

from dodgerl.envs.dodge_env import DodgeEnv
from dodgerl.envs.wrappers import FrameStack


class CountingEnv(gymnasium.Env):
    """Frame t is filled with the value t (t = 0 at reset), so stacks can be read off directly."""

    observation_space = spaces.Box(0, 255, shape=(4, 5, 3), dtype=np.uint8)
    action_space = spaces.Discrete(1)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._frame(), {}

    def step(self, action):
        self.t += 1
        return self._frame(), 0.0, False, False, {}

    def _frame(self):
        return np.full((4, 5, 3), self.t, dtype=np.uint8)


def stack_values(stack: np.ndarray) -> list[int]:
    return [int(stack[0, 0, 3 * i]) for i in range(stack.shape[2] // 3)]


def test_stack_shape_and_space():
    env = FrameStack(DodgeEnv(obs_mode="topdown", image_size=64), 4)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (64, 64, 12) and obs.dtype == np.uint8
    assert env.observation_space.shape == (64, 64, 12)
    assert env.observation_space.contains(obs)
    obs, *_ = env.step(env.action_space.sample())
    assert env.observation_space.contains(obs)


def test_reset_repeats_the_first_frame_k_times():
    env = FrameStack(CountingEnv(), 3)
    obs, _ = env.reset()
    assert stack_values(obs) == [0, 0, 0]
    inner = DodgeEnv(obs_mode="topdown", image_size=64)
    stacked = FrameStack(inner, 3)
    obs, _ = stacked.reset(seed=1)
    first, _ = DodgeEnv(obs_mode="topdown", image_size=64).reset(seed=1)
    for i in range(3):
        assert np.array_equal(obs[:, :, 3 * i : 3 * i + 3], first)


def test_frames_are_oldest_first_and_each_channel_triple_is_one_frame():
    env = FrameStack(CountingEnv(), 4)
    env.reset()
    history = []
    for t in range(1, 7):
        obs, *_ = env.step(0)
        history.append(stack_values(obs))
        assert (obs[:, :, -3:] == t).all()  # newest frame last, whole frame
    assert history[0] == [0, 0, 0, 1]
    assert history[2] == [0, 1, 2, 3]
    assert history[5] == [3, 4, 5, 6]
    obs, _ = env.reset()
    assert stack_values(obs) == [0, 0, 0, 0]


def test_returned_stacks_are_not_overwritten_by_later_steps():
    env = FrameStack(CountingEnv(), 2)
    first, _ = env.reset()
    second, *_ = env.step(0)
    env.step(0)
    assert stack_values(first) == [0, 0] and stack_values(second) == [0, 1]
    with pytest.raises(ValueError):
        second[0, 0, 0] = 9  # read-only: mutating it would corrupt the next stack


def test_framestack_rejects_vector_observations_and_bad_k():
    with pytest.raises(ValueError, match="uint8"):
        FrameStack(DodgeEnv(obs_mode="vector"), 4)
    with pytest.raises(ValueError, match="k"):
        FrameStack(DodgeEnv(obs_mode="topdown", image_size=64), 0)
