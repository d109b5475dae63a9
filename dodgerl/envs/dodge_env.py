"""The Gymnasium environment ``dodgerl/Dodge-v0``: dodge projectiles in a 20 m x 20 m arena.

| | |
| --- | --- |
| Action, ``basic`` | Box(-1, 1, (2,), float32): desired velocity (x east, y north) as a fraction of 6 m/s; norms above 1 are scaled to 1 |
| Action, ``dash`` | Box(-1, 1, (3,), float32): as ``basic``; a 3rd component > 0 starts a dash (2.5x speed for 6 steps) if the 45-step cooldown is over |
| Observation, ``vector`` | float32 (65,), see below |
| Observation, ``topdown`` | uint8 (image_size, image_size, 3), RGB, ``obs[row, col]`` with row = south, col = east; colours in :mod:`dodgerl.envs.rasterizer` |
| Reward | +1 per step survived; -100 on the step the player is hit (and no +1) |
| Termination | hit by a projectile |
| Truncation | ``max_episode_steps`` steps (default 1000) without a hit; never both flags at once |
| Step | 1/30 s of simulated time (2 pymunk steps of 1/60 s) |

Vector observation (all float32, clipped to the observation space bounds):

| index | meaning | scale |
| --- | --- | --- |
| 0, 1 | player x, y | / 10 m -> [-1, 1] |
| 2, 3 | player vx, vy | / 15 m/s (dash speed) -> [-1, 1] |
| 4 | dash cooldown left, fraction | [0, 1]; always 0 with ``basic`` actions |
| 5 + 6i .. 10 + 6i | i-th nearest projectile, i = 0..9, nearest first: relative x, y (projectile - player) / 20 m; relative vx, vy (projectile - player) / 30 m/s; centre distance / (20 sqrt 2) m; present flag 1.0 | rows for absent projectiles are all zero |

``info`` holds ``steps`` (control steps since reset) and ``projectiles``
(live projectile count). ``env.unwrapped.state()`` gives the true world state
for scripted policies and tests. ``env.unwrapped.observation_structure`` publishes the vector
observation's layout and the planar (x, y) pairs of observation and action, which an agent's
set encoder and symmetry augmentation need (``sac.with_observation_structure``).

Levels (``level=1|2|3`` or a :class:`~dodgerl.envs.levels.LevelSpec`) are
described in :mod:`dodgerl.envs.levels`.
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from dodgerl.envs.arena import (
    ARENA_HALF,
    ARENA_SIZE,
    DASH_COOLDOWN_STEPS,
    MAX_PLAYER_SPEED,
    PLAYER_RADIUS,
    Arena,
)
from dodgerl.envs.levels import LevelSpec, resolve_level
from dodgerl.envs.rasterizer import Rasterizer, check_image_size
from dodgerl.envs.structure import ObservationStructure

OBS_MODES = ("vector", "topdown")
ACTION_SPACE_TYPES = ("basic", "dash")
NUM_NEAREST = 10
PLAYER_FEATURES = 5
PROJECTILE_FEATURES = 6
VECTOR_OBS_SIZE = PLAYER_FEATURES + NUM_NEAREST * PROJECTILE_FEATURES
REL_VEL_SCALE = 30.0
DIST_SCALE = ARENA_SIZE * math.sqrt(2.0)
_PLAYER_SCALE = np.array([1.0 / ARENA_HALF] * 2 + [1.0 / MAX_PLAYER_SPEED] * 2)
_REL_SCALE = np.array([1.0 / ARENA_SIZE] * 2 + [1.0 / REL_VEL_SCALE] * 2)
# The vector observation's structure (the table above): the player's features, then one row
# per projectile whose last feature is its presence flag.
DODGE_OBS_LAYOUT = (PLAYER_FEATURES, PROJECTILE_FEATURES)
# Its planar (x, y) vectors, by the index of their x component: the player's position and
# velocity, then each projectile row's relative position and velocity.
DODGE_OBS_XY = (0, 2) + tuple(
    PLAYER_FEATURES + PROJECTILE_FEATURES * row + j for row in range(NUM_NEAREST) for j in (0, 2)
)
# The action's: the desired velocity (a dash trigger, if any, is invariant).
DODGE_ACTION_XY = (0,)
HIT_REWARD = -100.0
ALIVE_REWARD = 1.0


def _vector_bounds() -> tuple[np.ndarray, np.ndarray]:
    low = -np.ones(VECTOR_OBS_SIZE, dtype=np.float32)
    high = np.ones(VECTOR_OBS_SIZE, dtype=np.float32)
    low[4] = 0.0  # dash cooldown fraction
    block = low[PLAYER_FEATURES:].reshape(NUM_NEAREST, PROJECTILE_FEATURES)
    block[:, 4] = 0.0  # distance
    block[:, 5] = 0.0  # present flag
    return low, high


class DodgeEnv(gymnasium.Env):
    """Dodge projectiles; see the module docstring for spaces, rewards and timing."""

    metadata = {"render_modes": ["human", "rgb_array"], "render_fps": 30}

    def __init__(
        self,
        level: int | LevelSpec = 1,
        obs_mode: str = "vector",
        image_size: int = 256,
        action_space_type: str = "basic",
        max_episode_steps: int = 1000,
        render_mode: str | None = None,
    ) -> None:
        self.spec_level = resolve_level(level)
        if obs_mode not in OBS_MODES:
            raise ValueError(f"unknown obs_mode {obs_mode!r}: expected one of {OBS_MODES}")
        if action_space_type not in ACTION_SPACE_TYPES:
            raise ValueError(f"unknown action_space_type {action_space_type!r}: expected one of {ACTION_SPACE_TYPES}")
        self.image_size = check_image_size(image_size)
        if isinstance(max_episode_steps, bool) or not isinstance(max_episode_steps, (int, np.integer)) or max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be a positive int, got {max_episode_steps!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"unknown render_mode {render_mode!r}: expected None or one of {self.metadata['render_modes']}")
        self.obs_mode = obs_mode
        self.action_space_type = action_space_type
        self.max_episode_steps = int(max_episode_steps)
        self.render_mode = render_mode

        action_dim = 3 if action_space_type == "dash" else 2
        self._action_shape = (action_dim,)
        self.action_space = spaces.Box(-1.0, 1.0, shape=self._action_shape, dtype=np.float32)
        if obs_mode == "vector":
            self._low, self._high = _vector_bounds()
            self.observation_space = spaces.Box(self._low, self._high, dtype=np.float32)
        else:
            size = self.image_size
            self.observation_space = spaces.Box(0, 255, shape=(size, size, 3), dtype=np.uint8)

        self.arena = Arena(self.spec_level, dash_enabled=action_space_type == "dash")
        needs_pixels = obs_mode == "topdown" or render_mode is not None
        self._rasterizer = Rasterizer(self.image_size, self.spec_level.projectile_radius) if needs_pixels else None
        self._last_frame: np.ndarray | None = None
        self._window = None
        self._clock = None
        self._started = False

    # ------------------------------------------------------------------ API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.arena.reset(self.np_random)
        self._started = True
        self._done = False
        obs = self._observe()
        if self.render_mode == "human":
            self.render()
        return obs, {"steps": 0, "projectiles": 0}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        if not self._started:
            raise RuntimeError("call reset() before step()")
        a = np.asarray(action)
        if a.shape != self._action_shape:
            raise ValueError(f"action must have shape {self._action_shape} ({self.action_space_type!r} actions), got {a.shape}")
        values = a.tolist()
        for v in values:
            if not math.isfinite(v):
                raise ValueError(f"action must be finite, got {values}")
        vx = min(1.0, max(-1.0, values[0]))
        vy = min(1.0, max(-1.0, values[1]))
        dash = len(values) == 3 and values[2] > 0.0
        hit = self.arena.step(vx, vy, dash)
        steps = self.arena.steps
        if hit:
            reward, terminated, truncated = HIT_REWARD, True, False
        else:
            reward, terminated, truncated = ALIVE_REWARD, False, steps >= self.max_episode_steps
        obs = self._observe()
        if self.render_mode == "human":
            self.render()
        return obs, reward, terminated, truncated, {"steps": steps, "projectiles": self.arena.proj_pos.shape[0]}

    def render(self) -> np.ndarray | None:
        if self.render_mode is None:
            gymnasium.logger.warn("render() called with render_mode=None; pass render_mode='rgb_array' or 'human'")
            return None
        frame = self._last_frame if self.obs_mode == "topdown" else None
        if frame is None:
            frame = self._rasterizer.draw(self.arena.player_pos, self.arena.proj_pos)
        if self.render_mode == "rgb_array":
            return frame
        self._show(frame)
        return None

    def close(self) -> None:
        if self._window is not None:
            import pygame

            pygame.display.quit()
            self._window = None

    @property
    def observation_structure(self) -> ObservationStructure:
        """The observation's set layout and planar pairs (vector observations; None for images)
        and the action's planar pair, for agents that use them (``sac.with_observation_structure``)."""
        if self.obs_mode == "vector":
            return ObservationStructure(DODGE_OBS_LAYOUT, DODGE_OBS_XY, DODGE_ACTION_XY)
        return ObservationStructure(None, None, DODGE_ACTION_XY)

    def state(self) -> dict[str, Any]:
        """The true world state (metres, m/s, world frame: x east, y north, origin at the centre).

        Keys: ``player_pos`` (2,) and ``player_vel`` (2,) float64; ``projectile_pos``
        and ``projectile_vel`` (n, 2) float64 (n live projectiles, no particular
        order); ``player_radius``, ``projectile_radius`` (m); ``dash_cooldown``
        (control steps until a dash can start); ``steps``. The arrays are
        replaced, not mutated, by the next step; treat them as read-only.
        """
        ar = self.arena
        return {
            "player_pos": ar.player_pos,
            "player_vel": ar.player_vel,
            "projectile_pos": ar.proj_pos,
            "projectile_vel": ar.proj_vel,
            "player_radius": PLAYER_RADIUS,
            "projectile_radius": self.spec_level.projectile_radius,
            "dash_cooldown": ar.dash_cooldown,
            "steps": ar.steps,
        }

    # ------------------------------------------------------------ internals
    def _observe(self) -> np.ndarray:
        ar = self.arena
        if self.obs_mode == "topdown":
            self._last_frame = self._rasterizer.draw(ar.player_pos, ar.proj_pos)
            return self._last_frame
        obs = np.zeros(VECTOR_OBS_SIZE, dtype=np.float32)
        obs[0:4] = ar._player_state * _PLAYER_SCALE
        obs[4] = ar.dash_cooldown * (1.0 / DASH_COOLDOWN_STEPS)
        if ar.dist.shape[0]:
            order = np.argsort(ar.dist, kind="stable")[:NUM_NEAREST]
            k = order.shape[0]
            block = obs[PLAYER_FEATURES : PLAYER_FEATURES + k * PROJECTILE_FEATURES].reshape(k, PROJECTILE_FEATURES)
            block[:, 0:4] = ar.rel[order] * _REL_SCALE
            block[:, 4] = ar.dist[order] * (1.0 / DIST_SCALE)
            block[:, 5] = 1.0
        np.minimum(np.maximum(obs, self._low, out=obs), self._high, out=obs)
        return obs

    def _show(self, frame: np.ndarray) -> None:
        import pygame

        if self._window is None:
            pygame.display.init()
            self._window = pygame.display.set_mode((self.image_size, self.image_size))
            pygame.display.set_caption("dodgerl")
            self._clock = pygame.time.Clock()
        surf = pygame.image.frombuffer(frame.tobytes(), (self.image_size, self.image_size), "RGB")
        self._window.blit(surf, (0, 0))
        pygame.event.pump()
        pygame.display.flip()
        self._clock.tick(self.metadata["render_fps"])
