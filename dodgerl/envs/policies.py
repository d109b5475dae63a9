"""Reference policies for the dodge arena: a uniform random policy, a scripted dodger and a
lookahead planner, the last two reading the true state.

They give the reference returns in ``docs/env.md`` and the sanity checks in
the tests; none learns.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np

from dodgerl.envs.arena import ARENA_HALF, CONTROL_DT, PLAYER_RADIUS, PLAYER_SPEED

HORIZON_S = 1.2
"""Projectiles whose closest approach is further ahead than this are ignored."""
DANGER_MARGIN = 1.5
"""Metres beyond touching at which a predicted miss still counts as a threat."""
CENTRE_PULL = 0.6
"""Weight of the pull toward the arena centre, at the wall (grows linearly from the centre)."""
DASH_TIME_S = 0.25
"""Dash when a threat's closest approach is sooner than this."""


def random_action(action_space: gymnasium.spaces.Box, rng: np.random.Generator) -> np.ndarray:
    """A uniform random action from ``action_space``, drawn with ``rng`` (reproducible, unlike ``space.sample()``)."""
    return rng.uniform(action_space.low, action_space.high).astype(action_space.dtype)


def heuristic_action(state: dict[str, Any], dash: bool = False) -> np.ndarray:
    """Steer away from the projectiles that will pass closest soonest, plus a pull toward the centre.

    ``state`` is ``DodgeEnv.state()``. For each projectile, the time ``t`` of
    closest approach to the (momentarily still) player and the miss distance
    ``m`` there are computed; a threat (0 <= t < HORIZON_S, m < radii +
    DANGER_MARGIN) pushes the player away from its closest-approach point with
    weight (1 - m / danger) / (t + 0.1). Returns a (2,) action, or (3,) with
    the dash component when ``dash`` is True.
    """
    pos = state["player_pos"]
    rel = state["projectile_pos"] - pos
    vel = state["projectile_vel"]
    danger = state["player_radius"] + state["projectile_radius"] + DANGER_MARGIN
    push = -CENTRE_PULL * pos / ARENA_HALF
    soonest = np.inf
    if rel.shape[0]:
        vv = np.maximum(np.einsum("ij,ij->i", vel, vel), 1e-9)
        t = -np.einsum("ij,ij->i", rel, vel) / vv
        closest = rel + t[:, None] * vel  # closest-approach point, relative to the player
        miss = np.hypot(closest[:, 0], closest[:, 1])
        threat = (t >= 0.0) & (t < HORIZON_S) & (miss < danger)
        if threat.any():
            c, m, tt, v = closest[threat], miss[threat], t[threat], vel[threat]
            # Away from the closest-approach point; dead-on hits have none, so
            # take the side of the projectile's path nearer the centre.
            side = np.stack([-v[:, 1], v[:, 0]], axis=1) / np.sqrt(np.einsum("ij,ij->i", v, v))[:, None]
            side *= np.where(side @ (-pos) >= 0.0, 1.0, -1.0)[:, None]
            away = np.where((m > 1e-3)[:, None], -c / np.maximum(m, 1e-3)[:, None], side)
            weight = (1.0 - m / danger) / (tt + 0.1)
            push = push + (weight[:, None] * away).sum(axis=0)
            soonest = float(tt.min())
    norm = float(np.hypot(push[0], push[1]))
    move = push / norm if norm > 1.0 else push
    if not dash:
        return move.astype(np.float32)
    trigger = 1.0 if soonest < DASH_TIME_S else -1.0
    return np.array([move[0], move[1], trigger], dtype=np.float32)


LOOKAHEAD_STEPS = 10
"""Control steps (1/3 s) the lookahead planner simulates each candidate move for."""
CLEARANCE_CAP = 1.5
"""Metres of clearance beyond which the planner counts a move as safe, whatever the margin."""
_ANGLES = np.linspace(0.0, 2.0 * np.pi, 16, endpoint=False)
_UNIT = np.stack([np.cos(_ANGLES), np.sin(_ANGLES)], axis=1)
LOOKAHEAD_MOVES = np.concatenate([_UNIT, 0.5 * _UNIT, np.zeros((1, 2))]).astype(np.float32)
"""The planner's 33 candidate actions: 16 directions at full and at half speed, and standing still."""


def lookahead_action(state: dict[str, Any], steps: int = LOOKAHEAD_STEPS) -> np.ndarray:
    """The candidate move (``LOOKAHEAD_MOVES``) that keeps the player farthest from every live
    projectile over the next ``steps`` control steps, held constant.

    Each projectile is extrapolated in a straight line (as it flies) and the player at the
    move's velocity, clamped to the arena; a move's score is its smallest gap between the
    player's and any projectile's edges over the horizon, capped at ``CLEARANCE_CAP``, minus a
    small pull toward the centre (0.02 per metre from it at the horizon's end), so that among
    safe moves the player drifts away from the walls. Projectiles not yet spawned are unknown
    to it. A reference of what a policy reading only the current state can reach (the state
    holds everything the 65-dim observation does, for every projectile); returns a (2,) action.
    """
    clearance, path = _clearance_and_paths(state, steps)
    score = clearance - 0.02 * np.linalg.norm(path[:, -1, :], axis=-1)
    return LOOKAHEAD_MOVES[int(np.argmax(score))].copy()


def lookahead_clearance(state: dict[str, Any], steps: int = LOOKAHEAD_STEPS) -> np.ndarray:
    """Per candidate move (``LOOKAHEAD_MOVES``, held for ``steps`` control steps): the smallest
    gap in metres between the player's and any live projectile's edges over the horizon, capped
    at ``CLEARANCE_CAP`` (the cap where none is live); <= 0 means a hit. The part of
    :func:`lookahead_action`'s score that a critic must know: how dangerous each move is."""
    return _clearance_and_paths(state, steps)[0]


def _clearance_and_paths(state: dict[str, Any], steps: int) -> tuple[np.ndarray, np.ndarray]:
    pos = state["player_pos"]
    t = np.arange(1, steps + 1) * CONTROL_DT
    limit = ARENA_HALF - PLAYER_RADIUS
    path = np.clip(pos + LOOKAHEAD_MOVES[:, None, :] * PLAYER_SPEED * t[None, :, None], -limit, limit)
    # the cap where no projectile is live: the same for every move, so the choice is unchanged
    clearance = np.full(len(LOOKAHEAD_MOVES), CLEARANCE_CAP)
    if state["projectile_pos"].shape[0]:
        flight = state["projectile_pos"][None] + state["projectile_vel"][None] * t[:, None, None]
        gap = np.linalg.norm(path[:, :, None, :] - flight[None], axis=-1)
        gap -= state["player_radius"] + state["projectile_radius"]
        clearance = np.minimum(gap.min(axis=(1, 2)), CLEARANCE_CAP)
    return clearance, path


class LookaheadPolicy:
    """``LookaheadPolicy(env)(obs) -> action``: :func:`lookahead_action` on ``env.unwrapped.state()``
    (``basic`` actions only). Ignores the observation, like :class:`HeuristicPolicy`."""

    def __init__(self, env: gymnasium.Env, steps: int = LOOKAHEAD_STEPS) -> None:
        self.env = env.unwrapped
        if self.env.action_space.shape != (2,):
            raise ValueError(f"LookaheadPolicy plans 'basic' (2-dim) actions; the env's action space "
                             f"is {self.env.action_space}")
        self.steps = steps

    def __call__(self, observation: Any = None) -> np.ndarray:
        return lookahead_action(self.env.state(), self.steps)


class HeuristicPolicy:
    """``HeuristicPolicy(env)(obs) -> action``: :func:`heuristic_action` on ``env.unwrapped.state()``.

    Ignores the observation, so it works for every obs mode and wrapper.
    """

    def __init__(self, env: gymnasium.Env) -> None:
        self.env = env.unwrapped
        self.dash = self.env.action_space.shape[0] == 3

    def __call__(self, observation: Any = None) -> np.ndarray:
        return heuristic_action(self.env.state(), dash=self.dash)


class RandomPolicy:
    """``RandomPolicy(env, seed)(obs) -> action``: :func:`random_action` with its own generator."""

    def __init__(self, env: gymnasium.Env, seed: int | None = None) -> None:
        self.action_space = env.action_space
        self.rng = np.random.default_rng(seed)

    def __call__(self, observation: Any = None) -> np.ndarray:
        return random_action(self.action_space, self.rng)


def run_episode(env: gymnasium.Env, policy: Any, seed: int | None = None) -> tuple[float, int]:
    """Play one episode; returns (return, length)."""
    obs, _ = env.reset(seed=seed)
    total, length = 0.0, 0
    while True:
        obs, reward, terminated, truncated, _ = env.step(policy(obs))
        total += float(reward)
        length += 1
        if terminated or truncated:
            return total, length


__all__ = ["HeuristicPolicy", "LookaheadPolicy", "RandomPolicy", "heuristic_action", "lookahead_action",
           "lookahead_clearance",
           "random_action", "run_episode"]
