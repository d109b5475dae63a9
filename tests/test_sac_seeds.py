"""Stacked seeds (``dodgerl.agents.sac.seeds``): a vmapped update of N stacked agents equals each
agent's own update, seeds do not influence each other, stack/unstack round-trip, and the seed
axis sharded over (fake) devices gives the same results. Tiny networks: runs on a 2-core CPU."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap

import gymnasium
import jax
import numpy as np
import pytest

from dodgerl.agents import sac
from dodgerl.agents.sac import seeds
from dodgerl.replay import gather_batch

ACTION_SPACE = gymnasium.spaces.Box(-1.0, 1.0, (2,), np.float32)
VECTOR_SPACE = gymnasium.spaces.Box(-np.inf, np.inf, (8,), np.float32)
IMAGE_SPACE = gymnasium.spaces.Box(0, 255, (64, 64, 3), np.uint8)
VECTOR_CONFIG = sac.SACConfig(net_arch=(16, 16), batch_size=8)
IMAGE_CONFIG = sac.SACConfig(net_arch=(16, 16), encoder_features=16, batch_size=4)

# Tolerances of "a stacked seed equals the agent alone". Not exact on the CPU: under vmap XLA
# computes the matrix products and reductions as batched kernels whose float rounding differs
# from the unbatched ones (in about 1 in 10 vector values and 1 in 3 image values, by a few
# ulps). Adam then divides each gradient by its own running magnitude, so where a parameter's
# gradients nearly cancel or vanish, that rounding moves the parameter by a visible fraction of
# a step: the difference is bounded on the learning rate's scale (3e-4 per step), not on the
# parameter's. The convolutions' kernels, with many such entries, need atol 1e-5 (~lr / 30).
VECTOR_TOLERANCE = {"rtol": 1e-6, "atol": 1e-6}
IMAGE_TOLERANCE = {"rtol": 1e-6, "atol": 1e-5}


def random_batch(space, n_steps, batch_size, seed):
    rng = np.random.default_rng(seed)

    def observations():
        if space.dtype == np.uint8:
            return rng.integers(0, 256, (n_steps, batch_size, *space.shape), dtype=np.uint8)
        return rng.normal(size=(n_steps, batch_size, *space.shape)).astype(np.float32)

    return sac.Batch(
        observations=observations(),
        actions=rng.uniform(-1, 1, (n_steps, batch_size, 2)).astype(np.float32),
        rewards=rng.normal(size=(n_steps, batch_size)).astype(np.float32),
        next_observations=observations(),
        terminated=(rng.uniform(size=(n_steps, batch_size)) < 0.3).astype(np.float32),
    )


def stacked_batch(batches):
    return jax.tree.map(lambda *fields: np.stack(fields), *batches)


def to_numpy(tree):
    return jax.tree.map(np.asarray, tree)


def assert_trees_close(got, expected, tolerance):
    got_leaves, got_def = jax.tree_util.tree_flatten_with_path(to_numpy(got))
    expected_leaves, expected_def = jax.tree.flatten(to_numpy(expected))
    assert got_def == expected_def
    for (path, x), y in zip(got_leaves, expected_leaves):
        np.testing.assert_allclose(x, y, err_msg=jax.tree_util.keystr(path), **tolerance)


def assert_trees_equal(got, expected):
    assert jax.tree.structure(got) == jax.tree.structure(expected)
    for x, y in zip(jax.tree.leaves(to_numpy(got)), jax.tree.leaves(to_numpy(expected))):
        np.testing.assert_array_equal(x, y)


# ---------------------------------------------------------------- stacking


def test_create_stacked_is_each_agent_created_alone():
    keys = jax.random.split(jax.random.key(3), 3)
    stacked = seeds.create_stacked(keys, VECTOR_SPACE, ACTION_SPACE, VECTOR_CONFIG)
    assert seeds.seed_count(stacked) == 3
    assert stacked.config == VECTOR_CONFIG and stacked.observation_shape == (8,)
    for agent, key in zip(seeds.unstack(stacked, 3), keys):
        assert_trees_equal(agent, sac.create(key, VECTOR_SPACE, ACTION_SPACE, VECTOR_CONFIG))
    from_list = seeds.create_stacked(list(keys), VECTOR_SPACE, ACTION_SPACE, VECTOR_CONFIG)
    assert_trees_equal(from_list, stacked)


def test_stack_unstack_round_trip():
    agents = [sac.create(jax.random.key(i), VECTOR_SPACE, ACTION_SPACE, VECTOR_CONFIG)
              for i in range(3)]
    stacked = seeds.stack(agents)
    assert jax.tree.leaves(stacked.critic.params)[0].shape[0] == 3
    back = seeds.unstack(stacked)
    for agent, original in zip(back, agents):
        assert_trees_equal(agent, original)
        assert (agent.config, agent.observation_shape, agent.action_dim) == (
            original.config, original.observation_shape, original.action_dim)
    assert_trees_equal(seeds.stack(back), stacked)
    with pytest.raises(ValueError, match="holds 3 seeds"):
        seeds.unstack(stacked, 2)


def test_stack_of_mismatched_static_data_names_the_field():
    agent = sac.create(jax.random.key(0), VECTOR_SPACE, ACTION_SPACE, VECTOR_CONFIG)
    other_gamma = sac.create(jax.random.key(1), VECTOR_SPACE, ACTION_SPACE,
                             sac.SACConfig(net_arch=(16, 16), batch_size=8, gamma=0.9))
    with pytest.raises(ValueError, match=r"agents\[1\]\.config\.gamma = 0\.9"):
        seeds.stack([agent, other_gamma])
    wider = gymnasium.spaces.Box(-np.inf, np.inf, (9,), np.float32)
    other_shape = sac.create(jax.random.key(1), wider, ACTION_SPACE, VECTOR_CONFIG)
    with pytest.raises(ValueError, match="observation_shape"):
        seeds.stack([agent, other_shape])


def test_seed_count_rejects_an_agent_without_a_seed_axis():
    agent = sac.create(jax.random.key(0), VECTOR_SPACE, ACTION_SPACE, VECTOR_CONFIG)
    with pytest.raises(ValueError, match="leading seed axis"):
        seeds.seed_count(agent)


# ---------------------------------------------------------------- updates


def updates_alone_and_stacked(space, config, n_seeds, n_steps):
    """Each seed's own ``update`` and one ``update_stacked`` of all, from the same agents, batches
    and keys: ([(agent, metrics)] alone, (stacked agent, metrics))."""
    init_keys = jax.random.split(jax.random.key(1), n_seeds)
    update_keys = jax.random.split(jax.random.key(7), n_seeds)
    batches = [random_batch(space, n_steps, config.batch_size, seed=i) for i in range(n_seeds)]
    stacked = seeds.create_stacked(init_keys, space, ACTION_SPACE, config)
    stacked_result = seeds.update_stacked(stacked, stacked_batch(batches), update_keys)
    alone = [sac.create(key, space, ACTION_SPACE, config).update(batch, update_key)
             for key, batch, update_key in zip(init_keys, batches, update_keys)]
    return alone, stacked_result


@pytest.mark.parametrize("space,config,n_seeds,n_steps,tolerance", [
    (VECTOR_SPACE, VECTOR_CONFIG, 3, 4, VECTOR_TOLERANCE),
    (IMAGE_SPACE, IMAGE_CONFIG, 2, 2, IMAGE_TOLERANCE),
], ids=["vector", "image"])
def test_stacked_update_equals_each_agents_own_update(space, config, n_seeds, n_steps, tolerance):
    alone, (stacked, metrics) = updates_alone_and_stacked(space, config, n_seeds, n_steps)
    assert seeds.seed_count(stacked) == n_seeds
    for i, (agent, agent_metrics) in enumerate(alone):
        assert_trees_close(seeds.unstack(stacked)[i], agent, tolerance)
        assert set(metrics) == set(agent_metrics)
        for name, value in agent_metrics.items():
            assert metrics[name].shape == (n_seeds,)
            np.testing.assert_allclose(metrics[name][i], value, err_msg=name, **tolerance)
        assert int(seeds.unstack(stacked)[i].critic.step) == n_steps


def test_a_seeds_result_does_not_depend_on_another_seeds_batch():
    keys = jax.random.split(jax.random.key(1), 2)
    update_keys = jax.random.split(jax.random.key(7), 2)
    batch_0 = random_batch(VECTOR_SPACE, 3, 8, seed=0)
    results = []
    for seed_1_batch in (1, 2):
        stacked = seeds.create_stacked(keys, VECTOR_SPACE, ACTION_SPACE, VECTOR_CONFIG)
        batch = stacked_batch([batch_0, random_batch(VECTOR_SPACE, 3, 8, seed=seed_1_batch)])
        results.append(seeds.update_stacked(stacked, batch, update_keys))
    (first, first_metrics), (second, second_metrics) = results
    assert_trees_equal(seeds.unstack(first)[0], seeds.unstack(second)[0])
    for name in first_metrics:
        assert first_metrics[name][0] == second_metrics[name][0], name
        assert first_metrics[name][1] != second_metrics[name][1], name  # seed 1 did change


def test_update_stacked_compiles_once_and_checks_shapes():
    keys = jax.random.split(jax.random.key(0), 2)
    config = sac.SACConfig(net_arch=(16, 16), batch_size=8, gamma=0.97)  # a program of its own
    stacked = seeds.create_stacked(keys, VECTOR_SPACE, ACTION_SPACE, config)
    batch = stacked_batch([random_batch(VECTOR_SPACE, 2, 8, seed=i) for i in range(2)])
    before = seeds._update_stacked_jit._cache_size()
    for i in range(3):
        stacked, _ = seeds.update_stacked(stacked, batch, jax.random.split(jax.random.key(i), 2))
    assert seeds._update_stacked_jit._cache_size() == before + 1
    with pytest.raises(ValueError, match="expected one key per seed"):
        seeds.update_stacked(stacked, batch, jax.random.split(jax.random.key(0), 3))
    one_seed = jax.tree.map(lambda x: x[:1], batch)
    with pytest.raises(ValueError, match=r"expected \(N=2, K, B\)"):
        seeds.update_stacked(stacked, one_seed, keys)
    wrong_actions = batch.replace(actions=batch.actions[..., :1])
    with pytest.raises(ValueError, match="batch.actions"):
        seeds.update_stacked(stacked, wrong_actions, keys)


def test_update_from_stacked_equals_update_stacked_on_the_gathered_batches():
    n_seeds, n_steps, batch_size, n_envs, slots = 2, 3, 8, 2, 10
    rng = np.random.default_rng(0)
    frames = rng.normal(size=(n_seeds, n_envs, slots, 8)).astype(np.float32)
    indices = {
        "env": rng.integers(0, n_envs, (n_seeds, n_steps, batch_size)).astype(np.int32),
        "obs_slots": rng.integers(0, slots, (n_seeds, n_steps, batch_size, 1)).astype(np.int32),
        "next_slots": rng.integers(0, slots, (n_seeds, n_steps, batch_size, 1)).astype(np.int32),
        "actions": rng.uniform(-1, 1, (n_seeds, n_steps, batch_size, 2)).astype(np.float32),
        "rewards": rng.normal(size=(n_seeds, n_steps, batch_size)).astype(np.float32),
        "terminated": np.zeros((n_seeds, n_steps, batch_size), np.float32),
    }
    seed_axis = np.arange(n_seeds)[:, None, None]
    batch = sac.Batch(
        observations=frames[seed_axis, indices["env"], indices["obs_slots"][..., 0]],
        next_observations=frames[seed_axis, indices["env"], indices["next_slots"][..., 0]],
        actions=indices["actions"], rewards=indices["rewards"],
        terminated=indices["terminated"])
    init_keys = jax.random.split(jax.random.key(1), n_seeds)
    update_keys = jax.random.split(jax.random.key(7), n_seeds)
    plain = seeds.update_stacked(
        seeds.create_stacked(init_keys, VECTOR_SPACE, ACTION_SPACE, VECTOR_CONFIG),
        batch, update_keys)
    fused = seeds.update_from_stacked(
        seeds.create_stacked(init_keys, VECTOR_SPACE, ACTION_SPACE, VECTOR_CONFIG),
        jax.numpy.asarray(frames), indices, update_keys, gather_batch)
    assert_trees_close(fused, plain, VECTOR_TOLERANCE)
    with pytest.raises(ValueError, match="leading seed axis of 2"):
        seeds.update_from_stacked(fused[0], frames[:1], indices, update_keys, gather_batch)


# ---------------------------------------------------------------- acting


def test_act_stacked_acts_with_each_seeds_own_policy():
    keys = jax.random.split(jax.random.key(2), 3)
    stacked = seeds.create_stacked(keys, VECTOR_SPACE, ACTION_SPACE, VECTOR_CONFIG)
    observations = np.random.default_rng(0).normal(size=(3, 5, 8)).astype(np.float32)
    act_keys = jax.random.split(jax.random.key(9), 3)
    actions = seeds.act_stacked(stacked, observations, act_keys)
    deterministic = seeds.act_stacked(stacked, observations, deterministic=True)
    assert actions.shape == deterministic.shape == (3, 5, 2)
    for i, agent in enumerate(seeds.unstack(stacked)):
        np.testing.assert_allclose(actions[i], agent.act(observations[i], act_keys[i]),
                                   **VECTOR_TOLERANCE)
        np.testing.assert_allclose(deterministic[i],
                                   agent.act(observations[i], deterministic=True),
                                   **VECTOR_TOLERANCE)
    with pytest.raises(ValueError, match="expected"):
        seeds.act_stacked(stacked, observations[:2], act_keys)
    with pytest.raises(ValueError, match="keys are required"):
        seeds.act_stacked(stacked, observations)


# ---------------------------------------------------------------- sharding

SHARDED_SCRIPT = textwrap.dedent("""
    import jax, numpy as np
    from tests.test_sac_seeds import (ACTION_SPACE, VECTOR_CONFIG, VECTOR_SPACE, VECTOR_TOLERANCE,
                                      assert_trees_close, random_batch, stacked_batch)
    from dodgerl.agents.sac import seeds

    assert len(jax.devices()) == 4, jax.devices()
    init_keys = jax.random.split(jax.random.key(1), 4)
    batch = stacked_batch([random_batch(VECTOR_SPACE, 3, 8, seed=i) for i in range(4)])
    results = []
    for shard in (False, True):
        stacked = seeds.create_stacked(init_keys, VECTOR_SPACE, ACTION_SPACE, VECTOR_CONFIG)
        if shard:
            stacked = seeds.shard_seeds(stacked)
        keys = jax.random.split(jax.random.key(7), 4)
        results.append(seeds.update_stacked(stacked, batch, keys))
    (plain, plain_metrics), (sharded, sharded_metrics) = results
    for leaf in jax.tree.leaves((plain, plain_metrics)):
        assert len(leaf.sharding.device_set) == 1, leaf.sharding
    for leaf in jax.tree.leaves((sharded, sharded_metrics)):
        assert len(leaf.sharding.device_set) == 4, leaf.sharding
        assert len({shard.data.shape[0] for shard in leaf.addressable_shards}) == 1
        assert leaf.addressable_shards[0].data.shape[0] == 1, leaf.sharding
    assert_trees_close((sharded, sharded_metrics), (plain, plain_metrics), VECTOR_TOLERANCE)
    try:
        seeds.shard_seeds(seeds.create_stacked(init_keys[:3], VECTOR_SPACE, ACTION_SPACE,
                                               VECTOR_CONFIG))
    except ValueError as error:
        assert "do not split evenly over 4 devices" in str(error), error
    else:
        raise AssertionError("3 seeds over 4 devices did not raise")
    print("sharded ok")
""")


def test_seeds_sharded_over_four_devices_equal_the_unsharded_run():
    # The device count is read when JAX starts: the fake devices need a process of their own.
    root = pathlib.Path(__file__).resolve().parents[1]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu", PYTHONPATH=str(root))
    result = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT], check=False, cwd=root, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "sharded ok" in result.stdout
