"""SACConfig knows no env: what depends on an observation's structure is given, or published by
the env and filled in by ``with_observation_structure``; ``impl`` is part of the config."""

import dataclasses

import gymnasium
import jax
import numpy as np
import pytest

from dodgerl.agents import sac
from dodgerl.envs.dodge_env import DODGE_ACTION_XY, DODGE_OBS_LAYOUT, DODGE_OBS_XY, DodgeEnv
from dodgerl.envs.structure import ObservationStructure
from dodgerl.validation import ConfigError

TINY = dict(net_arch=(8,), batch_size=4, set_encoder_arch=(8,))
ACTION_SPACE = gymnasium.spaces.Box(-1.0, 1.0, (2,), np.float32)
DODGE_VECTOR_SPACE = gymnasium.spaces.Box(-1.0, 1.0, (65,), np.float32)
IMAGE_SPACE = gymnasium.spaces.Box(0, 255, (40, 40, 3), np.uint8)


def test_set_encoder_without_a_layout_names_the_key_and_where_to_get_it():
    cfg = sac.SACConfig(**TINY, vector_encoder="set")
    with pytest.raises(ConfigError, match=r"agent\.set_layout: not given.*observation_structure"):
        sac.create(jax.random.key(0), DODGE_VECTOR_SPACE, ACTION_SPACE, cfg)
    # Images do not use it.
    sac.create(jax.random.key(0), IMAGE_SPACE, ACTION_SPACE, cfg)


@pytest.mark.parametrize("given, missing", [
    ({}, "symmetry_obs_xy"),
    ({"symmetry_action_xy": (0,)}, "symmetry_obs_xy"),
    ({"symmetry_obs_xy": DODGE_OBS_XY}, "symmetry_action_xy"),
])
def test_symmetry_of_vectors_without_its_pairs_names_the_missing_key(given, missing):
    cfg = sac.SACConfig(**TINY, symmetry="flip_x", **given)
    with pytest.raises(ConfigError, match=rf"agent\.{missing}: not given.*with_observation_structure"):
        sac.create(jax.random.key(0), DODGE_VECTOR_SPACE, ACTION_SPACE, cfg)


def test_symmetry_of_images_needs_the_action_pairs_only():
    with pytest.raises(ConfigError, match=r"agent\.symmetry_action_xy: not given"):
        sac.create(jax.random.key(0), IMAGE_SPACE, ACTION_SPACE,
                   sac.SACConfig(**TINY, symmetry="d4"))
    sac.create(jax.random.key(0), IMAGE_SPACE, ACTION_SPACE,
               sac.SACConfig(**TINY, symmetry="d4", symmetry_action_xy=(0,)))


def test_with_observation_structure_fills_only_the_fields_left_unset():
    structure = ObservationStructure(set_layout=(5, 6), planar_xy=(0, 2), action_planar_xy=(0,))
    filled = sac.with_observation_structure(sac.SACConfig(**TINY), structure)
    assert (filled.set_layout, filled.symmetry_obs_xy, filled.symmetry_action_xy) == (
        (5, 6), (0, 2), (0,))
    own = sac.SACConfig(**TINY, set_layout=(3, 4), symmetry_action_xy=())
    kept = sac.with_observation_structure(own, structure)
    assert (kept.set_layout, kept.symmetry_obs_xy, kept.symmetry_action_xy) == ((3, 4), (0, 2), ())
    assert dataclasses.replace(kept, symmetry_obs_xy=None) == own  # nothing else changed
    # Nothing published (None fields, or no structure at all): the config as it was.
    assert sac.with_observation_structure(own, ObservationStructure()) == own
    assert sac.with_observation_structure(own, None) is own


def test_vector_dodge_env_publishes_the_layout_of_its_observation():
    env = DodgeEnv(level=2)
    structure = env.observation_structure
    assert structure == ObservationStructure(DODGE_OBS_LAYOUT, DODGE_OBS_XY, DODGE_ACTION_XY)
    (dims,), (g, m) = env.observation_space.shape, structure.set_layout
    assert (dims - g) % m == 0 and (dims - g) // m == 10
    obs, info = env.reset(seed=1)
    for _ in range(60):
        obs, _, terminated, truncated, info = env.step(np.zeros(2, np.float32))
        if terminated or truncated:
            break
    # The last feature of each item is its presence flag: as many as there are projectiles.
    items = obs[g:].reshape(-1, m)
    assert items[:, -1].sum() == min(info["projectiles"], 10)
    assert set(np.unique(items[:, -1])) <= {0.0, 1.0}
    # The pairs lie inside the observation, do not overlap, and are the x, y of each vector.
    covered = structure.planar_xy + tuple(i + 1 for i in structure.planar_xy)
    assert len(set(covered)) == len(covered) and max(covered) < dims
    config = sac.with_observation_structure(sac.SACConfig(**TINY, vector_encoder="set",
                                                          symmetry="d4"), structure)
    agent = sac.create(jax.random.key(0), env.observation_space, env.action_space, config)
    assert agent.act(obs, deterministic=True).shape == (2,)


def test_published_structure_is_the_old_sac_config_defaults_value_for_value():
    # Before the sac package (5a32439) these were SACConfig defaults; runs of the old tree are
    # reproduced bit for bit only if the env publishes exactly them (written out, not imported).
    old_obs_xy = (0, 2, 5, 7, 11, 13, 17, 19, 23, 25, 29, 31, 35, 37, 41, 43, 47, 49, 53, 55,
                  59, 61)
    structure = DodgeEnv(level=1).observation_structure
    filled = sac.with_observation_structure(sac.SACConfig(vector_encoder="set", symmetry="flip_x"),
                                            structure)
    assert (filled.set_layout, filled.symmetry_obs_xy, filled.symmetry_action_xy) == (
        (5, 6), old_obs_xy, (0,))
    assert all(type(i) is int for i in filled.set_layout + filled.symmetry_obs_xy
               + filled.symmetry_action_xy)
    # Per item of 6: relative x, y, vx, vy, distance, presence; the pairs are (x, y) and (vx, vy).
    items = np.asarray(old_obs_xy[2:]).reshape(10, 2) - 5
    assert (items % 6 == (0, 2)).all() and (items // 6 == np.arange(10)[:, None]).all()


def test_topdown_dodge_env_publishes_the_action_pair_only():
    env = DodgeEnv(level=1, obs_mode="topdown", image_size=64)
    assert env.observation_structure == ObservationStructure(None, None, DODGE_ACTION_XY)
    dash = DodgeEnv(level=1, action_space_type="dash")
    assert dash.observation_structure.action_planar_xy == (0,)  # the dash trigger is invariant
    config = sac.with_observation_structure(sac.SACConfig(**TINY, symmetry="d4"),
                                            env.observation_structure)
    sac.create(jax.random.key(0), env.observation_space, env.action_space, config)


def test_a_config_for_another_box_env_holds_no_dodge_value():
    env = gymnasium.wrappers.RescaleAction(gymnasium.make("Pendulum-v1"), -1.0, 1.0)
    config = sac.SACConfig()
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        assert value not in (DODGE_OBS_LAYOUT, DODGE_OBS_XY), field.name
    assert (config.set_layout, config.symmetry_obs_xy, config.symmetry_action_xy) == (None,) * 3
    agent = sac.create(jax.random.key(0), env.observation_space, env.action_space, config)
    obs, _ = env.reset(seed=0)
    assert agent.act(obs, deterministic=True).shape == (1,)
    env.close()


def test_impl_is_a_validated_part_of_the_config():
    cfg = sac.SACConfig.from_dict({"impl": {"concat_online": True, "scan_unroll": 2}})
    assert cfg.impl == sac.ImplOptions(concat_online=True, scan_unroll=2)
    assert sac.SACConfig.from_dict(cfg.to_dict()) == cfg
    hash(cfg)
    with pytest.raises(ConfigError, match=r"agent\.impl\.scan_unroll: must be >= 1"):
        sac.SACConfig.from_dict({"impl": {"scan_unroll": 0}})
    with pytest.raises(ConfigError, match=r"unknown config key agent\.impl\.unroll"):
        sac.SACConfig.from_dict({"impl": {"unroll": 2}})
    with pytest.raises(ConfigError, match=r"agent\.impl\.conv_gemm: expected true or false"):
        sac.ImplOptions(conv_gemm="yes")
    assert not hasattr(sac, "set_impl_options")  # no process-global options


def test_bad_values_name_the_full_key():
    with pytest.raises(ConfigError, match=r"^agent\.gamma: must lie in \[0, 1\]"):
        sac.SACConfig(gamma=2.0)
    with pytest.raises(ConfigError, match=r"^agent\.encoder_sharing: must be one of"):
        sac.SACConfig.from_dict({"encoder_sharing": "actor"})
    with pytest.raises(ConfigError, match=r"^agent\.target_entropy: must be a finite number"):
        sac.SACConfig(target_entropy=float("nan"))
