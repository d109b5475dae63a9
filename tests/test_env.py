"""Tests of the dodge arena env: API conformance, determinism, what pixels and vectors mean, rewards, errors."""

from __future__ import annotations

import itertools
import warnings

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import dodgerl  # noqa: F401  (registers dodgerl/Dodge-v0)
from dodgerl.envs.arena import ARENA_HALF, PLAYER_RADIUS
from dodgerl.envs.dodge_env import DIST_SCALE, NUM_NEAREST, DodgeEnv
from dodgerl.envs.levels import LEVELS, LevelSpec
from dodgerl.envs.policies import (
    LOOKAHEAD_MOVES,
    HeuristicPolicy,
    LookaheadPolicy,
    RandomPolicy,
    lookahead_action,
    random_action,
    run_episode,
)
from dodgerl.envs.rasterizer import (
    BACKGROUND_COLOR,
    PLAYER_COLOR,
    PROJECTILE_COLOR,
    WALL_COLOR,
    world_to_pixel,
)

EMPTY = LevelSpec(name="empty", volley_size=0)


def rollout(env: DodgeEnv, seed: int, steps: int) -> list[tuple]:
    """Observations, rewards and flags of a rollout with seeded random actions, resetting on episode end."""
    rng = np.random.default_rng(1234)
    obs, _ = env.reset(seed=seed)
    out = [(obs.copy(), 0.0, False, False)]
    for _ in range(steps):
        obs, reward, terminated, truncated, _ = env.step(random_action(env.action_space, rng))
        out.append((obs.copy(), reward, terminated, truncated))
        if terminated or truncated:
            obs, _ = env.reset()
            out.append((obs.copy(), 0.0, False, False))
    return out


# ------------------------------------------------------------------ conformance
@pytest.mark.parametrize(
    "level,obs_mode,action_space_type",
    list(itertools.product(sorted(LEVELS), ("vector", "topdown"), ("basic", "dash"))),
)
def test_check_env_passes_for_every_configuration(level, obs_mode, action_space_type):
    env = DodgeEnv(level=level, obs_mode=obs_mode, image_size=64, action_space_type=action_space_type)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # check_env reports problems as warnings
        check_env(env, skip_render_check=True)


def test_check_env_with_rgb_array_render():
    check_env(DodgeEnv(level=2, obs_mode="vector", image_size=64, render_mode="rgb_array"))


def test_gymnasium_make_after_import_dodgerl():
    env = gymnasium.make("dodgerl/Dodge-v0", level=2, obs_mode="topdown", image_size=96, action_space_type="dash")
    obs, info = env.reset(seed=0)
    assert obs.shape == (96, 96, 3) and obs.dtype == np.uint8
    assert env.action_space.shape == (3,)
    assert info["steps"] == 0
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert env.observation_space.contains(obs)
    assert info["steps"] == 1 and "projectiles" in info


def test_observations_lie_in_the_observation_space_through_an_episode():
    for obs_mode in ("vector", "topdown"):
        env = DodgeEnv(level=3, obs_mode=obs_mode, image_size=64)
        policy = HeuristicPolicy(env)
        obs, _ = env.reset(seed=3)
        for _ in range(200):
            assert env.observation_space.contains(obs)
            obs, _, terminated, truncated, _ = env.step(policy(obs))
            if terminated or truncated:
                break


# ------------------------------------------------------------------ determinism
@pytest.mark.parametrize("obs_mode", ["vector", "topdown"])
def test_same_seed_gives_identical_rollouts_and_different_seeds_differ(obs_mode):
    make = lambda: DodgeEnv(level=2, obs_mode=obs_mode, image_size=64, action_space_type="dash")  # noqa: E731
    a = rollout(make(), seed=7, steps=500)
    b = rollout(make(), seed=7, steps=500)
    assert len(a) == len(b)
    for (oa, ra, ta, ua), (ob, rb, tb, ub) in zip(a, b):
        assert oa.dtype == ob.dtype and np.array_equal(oa, ob)
        assert (ra, ta, ua) == (rb, tb, ub)
    c = rollout(make(), seed=8, steps=500)
    assert any(len(x[0]) != len(y[0]) or not np.array_equal(x[0], y[0]) for x, y in zip(a, c))


def test_reusing_an_env_replays_the_seed_exactly():
    env = DodgeEnv(level=3)
    first = rollout(env, seed=11, steps=200)
    second = rollout(env, seed=11, steps=200)
    assert all(np.array_equal(x[0], y[0]) and x[1:] == y[1:] for x, y in zip(first, second))


# ------------------------------------------------------------------ pixels
def test_player_is_drawn_at_its_projected_position():
    env = DodgeEnv(level=EMPTY, obs_mode="topdown", image_size=128)
    env.reset(seed=0)
    for action in ([1.0, 0.3], [-0.5, -1.0], [0.0, 1.0]):
        for _ in range(10):
            obs, *_ = env.step(np.array(action, dtype=np.float32))
        x, y = env.state()["player_pos"]
        row, col = world_to_pixel(x, y, 128)
        assert tuple(obs[row, col]) == PLAYER_COLOR
        # One player radius plus two pixels away, the floor shows again.
        off = int(np.ceil(PLAYER_RADIUS * 128 / 20.0)) + 2
        assert tuple(obs[row, col + off]) == BACKGROUND_COLOR
        assert tuple(obs[row - off, col]) == BACKGROUND_COLOR


def test_projectiles_are_drawn_where_the_physics_has_them():
    env = DodgeEnv(level=2, obs_mode="topdown", image_size=256)
    env.reset(seed=5)
    checked = 0
    for _ in range(60):
        obs, _, terminated, truncated, _ = env.step(np.zeros(2, dtype=np.float32))
        if terminated or truncated:
            break
        state = env.state()
        for x, y in state["projectile_pos"]:
            far = np.hypot(*(np.array([x, y]) - state["player_pos"])) > 2.0
            inside = max(abs(x), abs(y)) < ARENA_HALF - 0.5
            if far and inside:
                row, col = world_to_pixel(x, y, 256)
                assert tuple(obs[row, col]) == PROJECTILE_COLOR
                checked += 1
    assert checked > 10
    colours = {tuple(c) for c in obs.reshape(-1, 3)}
    assert colours <= {BACKGROUND_COLOR, WALL_COLOR, PLAYER_COLOR, PROJECTILE_COLOR}


def test_walls_frame_the_image_and_the_floor_fills_it():
    env = DodgeEnv(level=EMPTY, obs_mode="topdown", image_size=64)
    obs, _ = env.reset(seed=0)
    for edge in (obs[0], obs[-1], obs[:, 0], obs[:, -1]):
        assert (edge == WALL_COLOR).all()
    assert tuple(obs[5, 5]) == BACKGROUND_COLOR


@pytest.mark.parametrize("size", [64, 84, 100, 256])
def test_images_are_rendered_at_the_requested_size(size):
    env = DodgeEnv(level=1, obs_mode="topdown", image_size=size)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (size, size, 3) and obs.dtype == np.uint8
    assert env.observation_space.shape == (size, size, 3)


def test_rgb_array_render_matches_the_topdown_observation():
    env = DodgeEnv(level=1, obs_mode="topdown", image_size=64, render_mode="rgb_array")
    env.reset(seed=0)
    obs, *_ = env.step(np.zeros(2, dtype=np.float32))
    assert np.array_equal(env.render(), obs)
    vec_env = DodgeEnv(level=1, obs_mode="vector", image_size=64, render_mode="rgb_array")
    vec_env.reset(seed=0)
    vec_env.step(np.zeros(2, dtype=np.float32))
    assert np.array_equal(vec_env.render(), obs)


# ------------------------------------------------------------------ vectors
def test_vector_lists_projectiles_nearest_first_and_zero_pads():
    env = DodgeEnv(level=LevelSpec(name="busy", spawn_arc_deg=360.0, volley_size=3, spawn_interval_steps=(3, 3)))
    env.reset(seed=2)
    seen_full = seen_partial = False
    for _ in range(40):
        obs, _, terminated, truncated, _ = env.step(np.zeros(2, dtype=np.float32))
        if terminated or truncated:
            env.reset()
            continue
        state = env.state()
        rows = obs[5:].reshape(NUM_NEAREST, 6)
        n = state["projectile_pos"].shape[0]
        k = min(n, NUM_NEAREST)
        expected = np.sort(np.hypot(*(state["projectile_pos"] - state["player_pos"]).T))[:k]
        np.testing.assert_allclose(rows[:k, 4] * DIST_SCALE, expected, rtol=1e-5)
        assert (np.diff(rows[:k, 4]) >= 0).all()
        assert (rows[:k, 5] == 1.0).all()
        assert (rows[k:] == 0.0).all()
        # relative position matches the distance column
        np.testing.assert_allclose(np.hypot(rows[:k, 0], rows[:k, 1]) * 20.0, expected, rtol=1e-4)
        seen_full |= n > NUM_NEAREST
        seen_partial |= 0 < n < NUM_NEAREST
    assert seen_full and seen_partial


def test_vector_player_features_are_normalised_positions_and_velocities():
    env = DodgeEnv(level=EMPTY, action_space_type="dash")
    env.reset(seed=0)
    obs, *_ = env.step(np.array([1.0, 0.0, 1.0], dtype=np.float32))  # dash east
    state = env.state()
    np.testing.assert_allclose(obs[0:2], state["player_pos"] / ARENA_HALF, rtol=1e-6)
    np.testing.assert_allclose(obs[2:4], [1.0, 0.0], atol=1e-5)  # full dash speed
    assert obs[4] > 0.9  # cooldown just started
    assert (obs[5:] == 0.0).all()
    obs, *_ = env.step(np.array([0.0, -1.0, -1.0], dtype=np.float32))
    assert obs[3] < -0.3


def test_dash_has_a_cooldown():
    env = DodgeEnv(level=EMPTY, action_space_type="dash")
    env.reset(seed=0)
    speeds = []
    for _ in range(60):
        env.step(np.array([0.0, 0.0, 1.0], dtype=np.float32))  # ask to dash every step, stand still
        speeds.append(env.state()["dash_cooldown"])
    assert speeds[0] == 45 and speeds[44] == 1 and speeds[45] == 45  # one new dash per 45 steps


# ------------------------------------------------------------------ rewards and flags
def test_a_hit_gives_minus_100_and_terminates():
    env = DodgeEnv(level=LevelSpec(name="sniper", aim_spread_deg=0.0))
    env.reset(seed=0)
    total = 0.0
    for step in range(1, 200):
        obs, reward, terminated, truncated, info = env.step(np.zeros(2, dtype=np.float32))
        total += reward
        if terminated:
            break
        assert reward == 1.0 and not truncated
    assert terminated and not truncated and reward == -100.0
    assert total == (step - 1) - 100.0
    assert info["steps"] == step


def test_step_1000_truncates_without_terminating():
    env = DodgeEnv(level=EMPTY)
    env.reset(seed=0)
    for _ in range(999):
        _, reward, terminated, truncated, _ = env.step(np.array([0.3, -0.2], dtype=np.float32))
        assert reward == 1.0 and not terminated and not truncated
    _, reward, terminated, truncated, info = env.step(np.zeros(2, dtype=np.float32))
    assert truncated and not terminated and reward == 1.0 and info["steps"] == 1000


def test_the_walls_keep_the_player_inside():
    env = DodgeEnv(level=EMPTY)
    env.reset(seed=0)
    for _ in range(150):
        env.step(np.array([1.0, 1.0], dtype=np.float32))
    x, y = env.state()["player_pos"]
    assert ARENA_HALF - PLAYER_RADIUS - 0.1 < x <= ARENA_HALF - PLAYER_RADIUS + 0.05
    assert ARENA_HALF - PLAYER_RADIUS - 0.1 < y <= ARENA_HALF - PLAYER_RADIUS + 0.05


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"level": 4}, "level"),
        ({"level": "1"}, "level"),
        ({"obs_mode": "pixels"}, "obs_mode"),
        ({"action_space_type": "jump"}, "action_space_type"),
        ({"obs_mode": "topdown", "image_size": 63}, "image_size"),
        ({"obs_mode": "topdown", "image_size": 257}, "image_size"),
        ({"image_size": 128.0}, "image_size"),
        ({"max_episode_steps": 0}, "max_episode_steps"),
        ({"render_mode": "ansi"}, "render_mode"),
    ],
)
def test_bad_constructor_arguments_raise_value_errors_naming_them(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DodgeEnv(**kwargs)


def test_bad_level_spec_values_raise_value_errors_naming_them():
    with pytest.raises(ValueError, match="spawn_interval_steps"):
        LevelSpec(name="bad", spawn_interval_steps=(5, 2))
    with pytest.raises(ValueError, match="speed_range"):
        LevelSpec(name="bad", speed_range=(0.0, 3.0))


@pytest.mark.parametrize(
    "action_space_type,action,match",
    [
        ("basic", np.zeros(3, dtype=np.float32), "shape"),
        ("dash", np.zeros(2, dtype=np.float32), "shape"),
        ("basic", np.zeros((1, 2), dtype=np.float32), "shape"),
        ("basic", np.array([np.nan, 0.0], dtype=np.float32), "finite"),
        ("dash", np.array([0.0, 0.0, np.inf], dtype=np.float32), "finite"),
    ],
)
def test_bad_actions_raise_value_errors(action_space_type, action, match):
    env = DodgeEnv(action_space_type=action_space_type)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=match):
        env.step(action)


# ------------------------------------------------------------------ difficulty
def test_random_policy_dies_fast_on_level_1_and_the_heuristic_survives_longer():
    env = DodgeEnv(level=1)
    random_lengths = [run_episode(env, RandomPolicy(env, seed), seed=seed)[1] for seed in range(20)]
    heuristic_lengths = [run_episode(env, HeuristicPolicy(env), seed=seed)[1] for seed in range(5)]
    assert np.mean(random_lengths) < 100
    assert np.mean(heuristic_lengths) > 5 * np.mean(random_lengths)


def _one_projectile_state(player, projectile, velocity):
    return {"player_pos": np.array(player, float), "player_vel": np.zeros(2),
            "projectile_pos": np.array([projectile], float), "projectile_vel": np.array([velocity], float),
            "player_radius": 0.5, "projectile_radius": 0.3, "dash_cooldown": 0, "steps": 0}


def test_lookahead_steps_off_the_line_of_an_incoming_projectile():
    # A projectile 4 m east flying west at 16 m/s hits a player that stays or moves along x
    # within the horizon; the planner must leave the line (a north or south move at full speed).
    action = lookahead_action(_one_projectile_state((0.0, 0.0), (4.0, 0.0), (-16.0, 0.0)))
    assert abs(action[1]) > 0.9 and abs(action[0]) < 0.45, action
    # no projectile: every move is safe, and the pull toward the centre wins
    idle = lookahead_action({**_one_projectile_state((6.0, 0.0), (0.0, 0.0), (0.0, 0.0)),
                             "projectile_pos": np.zeros((0, 2)), "projectile_vel": np.zeros((0, 2))})
    np.testing.assert_allclose(idle, [-1.0, 0.0], atol=1e-6)  # full speed west, toward the centre
    assert any(np.array_equal(action, m) for m in LOOKAHEAD_MOVES)


def test_lookahead_survives_level_2_where_the_heuristic_does_not_always():
    env = DodgeEnv(level=2, max_episode_steps=400)
    lengths = [run_episode(env, LookaheadPolicy(env), seed=seed)[1] for seed in range(4)]
    assert lengths == [400] * 4
    with pytest.raises(ValueError, match="basic"):
        LookaheadPolicy(DodgeEnv(level=2, action_space_type="dash"))


def test_a_reused_env_replays_a_seed_exactly_like_a_fresh_one():
    # The episodes in between end pressed into a corner, with projectiles
    # alive and wall contacts cached.
    spec = LevelSpec(name="sparse", spawn_arc_deg=360.0, spawn_interval_steps=(4, 4), aim_spread_deg=90.0)
    used = DodgeEnv(level=spec, action_space_type="dash")
    for seed in range(3):
        used.reset(seed=100 + seed)
        for _ in range(120):
            used.step(np.array([1.0, 1.0, 1.0], dtype=np.float32))
        assert used.state()["projectile_pos"].shape[0] > 0
    assert used.state()["player_pos"].max() > 9.0
    a = rollout(DodgeEnv(level=spec, action_space_type="dash"), seed=42, steps=300)
    b = rollout(used, seed=42, steps=300)
    assert len(a) == len(b)
    assert all(np.array_equal(x[0], y[0]) and x[1:] == y[1:] for x, y in zip(a, b))


D4 = [(swap, sx, sy) for swap in (False, True) for sx in (1.0, -1.0) for sy in (1.0, -1.0)]


def _d4(v, swap, sx, sy):
    """A symmetry of the square on the last axis of (..., 2) world vectors."""
    v = np.asarray(v, float)
    v = v[..., ::-1] if swap else v
    return v * np.array([sx, sy])


def _observe_then_transform_the_world(env, element):
    """Play a level-2 episode 60 steps in (several projectiles in flight), then move the player
    and every projectile, positions and velocities, by ``element``; returns the observation
    before the move."""
    env.reset(seed=6)
    for _ in range(60):
        obs, _, terminated, _, _ = env.step(np.array([0.6, -0.3], np.float32))
    ar = env.arena
    assert not terminated and ar.proj.shape[0] >= 3
    player, proj = ar._player_state.copy(), ar.proj.copy()
    ar._player_state[:] = np.concatenate([_d4(player[0:2], *element), _d4(player[2:4], *element)])
    ar._set_projectiles(np.concatenate([_d4(proj[:, 0:2], *element), _d4(proj[:, 2:4], *element)], axis=1))
    return obs


@pytest.mark.parametrize("element", D4)
def test_agent_symmetry_pairs_are_the_observation_of_the_transformed_world(element):
    # SACConfig.symmetry transforms the pairs DODGE_OBS_XY of a stored observation; that must be
    # the observation the env computes for the rotated / reflected world.
    import jax.numpy as jnp

    from dodgerl.envs.dodge_env import DODGE_OBS_XY
    from dodgerl.networks import apply_planar_symmetries

    env = DodgeEnv(level=2)
    obs = _observe_then_transform_the_world(env, element)
    swap, sx, sy = element
    expected = apply_planar_symmetries(jnp.asarray(obs[None]), DODGE_OBS_XY, jnp.array([swap]),
                                       jnp.array([[sx, sy]], jnp.float32))
    np.testing.assert_allclose(env._observe(), np.asarray(expected)[0], atol=1e-6)


@pytest.mark.parametrize("size", [64, 84])
@pytest.mark.parametrize("element", D4)
def test_image_of_the_transformed_world_is_the_transformed_image(element, size):
    # SACConfig.symmetry rotates / reflects stored images whole: that must be, pixel for pixel,
    # the image the rasterizer draws of the rotated / reflected world.
    import jax.numpy as jnp

    from dodgerl.networks import apply_image_symmetries

    env = DodgeEnv(level=2, obs_mode="topdown", image_size=size)
    obs = _observe_then_transform_the_world(env, element)
    swap, sx, sy = element
    expected = apply_image_symmetries(jnp.asarray(obs[None]), jnp.array([swap]),
                                      jnp.array([[sx, sy]], jnp.float32))
    got = env._observe()
    assert (got == PLAYER_COLOR).all(-1).sum() > 10 and (got == PROJECTILE_COLOR).all(-1).sum() > 10
    np.testing.assert_array_equal(got, np.asarray(expected)[0])


@pytest.mark.parametrize("element", D4)
def test_player_motion_and_walls_are_symmetric_under_the_square_group(element):
    # The dynamics half of the symmetry claim: the transformed actions move the player along the
    # transformed path, walls included (the actions push into the walls and corners).
    empty = LevelSpec(name="empty", volley_size=0)
    plain, moved = DodgeEnv(level=empty), DodgeEnv(level=empty)
    plain.reset(seed=0)
    moved.reset(seed=0)
    start = plain.arena._player_state[0:2].copy()  # a random start, in a square around the centre

    class TransformedStart:  # arena.reset draws the start with uniform(); the rest as usual
        def uniform(self, low, high, size):
            return _d4(start, *element)

        def __getattr__(self, name):
            return getattr(moved.np_random, name)

    moved.arena.reset(TransformedStart())
    rng = np.random.default_rng(1)
    actions = np.clip(rng.normal([0.9, 0.5], 0.4, (200, 2)), -1, 1).astype(np.float32)
    actions[100:] *= -1
    reach = 0.0
    for a in actions:
        p, *_ = plain.step(a)
        m, *_ = moved.step(_d4(a, *element).astype(np.float32))
        np.testing.assert_allclose(m[0:2], _d4(p[0:2], *element), atol=1e-5)
        np.testing.assert_allclose(m[2:4], _d4(p[2:4], *element), atol=1e-5)
        reach = max(reach, float(np.abs(p[0:2]).max()))
    assert reach > 0.9  # it did reach a wall
