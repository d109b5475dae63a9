"""Frame stacking for image observations, channel-last and oldest first.

``FrameStack(env, k)`` turns uint8 (H, W, C) observations into (H, W, C*k):
channels ``[C*i : C*(i+1)]`` hold frame ``t - (k-1) + i``, so the newest frame
is last. At reset the first frame fills all k slots. This is exactly the
convention the replay buffer uses when it rebuilds stacks from single frames.

Each step costs one copy of the stack: the previous stack's newest k-1 frames
and the new frame are written once into a fresh array, which is returned
read-only (the wrapper reads it again next step, so it must not change).
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces


class FrameStack(gymnasium.ObservationWrapper):
    """Stack the last ``k`` uint8 (H, W, C) frames along the channel axis, oldest first."""

    def __init__(self, env: gymnasium.Env, k: int) -> None:
        super().__init__(env)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"FrameStack k must be a positive int, got {k!r}")
        space = env.observation_space
        if not (isinstance(space, spaces.Box) and space.dtype == np.uint8 and len(space.shape) == 3):
            raise ValueError(f"FrameStack needs uint8 (H, W, C) image observations, got {space}")
        self.k = int(k)
        h, w, c = space.shape
        self.channels = c
        self.observation_space = spaces.Box(0, 255, shape=(h, w, c * self.k), dtype=np.uint8)
        self._stack: np.ndarray | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        frame, info = self.env.reset(seed=seed, options=options)
        stack = np.concatenate([frame] * self.k, axis=2)
        stack.flags.writeable = False
        self._stack = stack
        return stack, info

    def observation(self, frame: np.ndarray) -> np.ndarray:
        prev = self._stack
        if prev is None:
            raise RuntimeError("call reset() before step()")
        stack = np.empty(prev.shape, dtype=np.uint8)
        keep = self.channels * (self.k - 1)
        stack[:, :, :keep] = prev[:, :, self.channels :]
        stack[:, :, keep:] = frame
        stack.flags.writeable = False
        self._stack = stack
        return stack
