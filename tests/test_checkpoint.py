"""RunCheckpoints: a latest checkpoint written in the background holds the agent as it was saved."""

from __future__ import annotations

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np

from dodgerl.agents import sac
from dodgerl.checkpoint import RunCheckpoints, complete_checkpoints, restore


def test_a_background_save_holds_the_agent_as_saved_though_the_next_update_donates_it(tmp_path):
    obs_space = gymnasium.spaces.Box(-1.0, 1.0, (8,), np.float32)
    act_space = gymnasium.spaces.Box(-1.0, 1.0, (2,), np.float32)
    agent = sac.create(jax.random.PRNGKey(0), obs_space, act_space,
                       sac.SACConfig(batch_size=8, net_arch=(16, 16)))
    saved = jax.tree_util.tree_map(np.array, jax.device_get(agent))
    checkpoints = RunCheckpoints(tmp_path, keep=2)
    checkpoints.save(10, agent, {"step": 10}, wait=False)
    rng = np.random.default_rng(0)
    batch = sac.Batch(
        observations=jnp.asarray(rng.uniform(-1, 1, (4, 8, 8)), jnp.float32),
        actions=jnp.asarray(rng.uniform(-1, 1, (4, 8, 2)), jnp.float32),
        rewards=jnp.asarray(rng.normal(size=(4, 8)), jnp.float32),
        next_observations=jnp.asarray(rng.uniform(-1, 1, (4, 8, 8)), jnp.float32),
        terminated=jnp.zeros((4, 8), jnp.float32),
    )
    # The update donates the saved agent's buffers while the save may still be writing.
    updated, _ = agent.update(batch, jax.random.PRNGKey(1))
    updated = jax.block_until_ready(updated)
    checkpoints.save(20, updated, {"step": 20}, wait=False)
    checkpoints.close()
    assert [p.name for p in complete_checkpoints(tmp_path / "checkpoints")] == ["10", "20"]
    restored, meta = restore(tmp_path / "checkpoints" / "10", updated)
    assert meta["step"] == 10
    for a, b in zip(jax.tree_util.tree_leaves(saved), jax.tree_util.tree_leaves(jax.device_get(restored))):
        np.testing.assert_array_equal(a, np.asarray(b))
    # and the update did change the parameters: the comparison above could have failed
    changed = [not np.array_equal(a, np.asarray(b)) for a, b in zip(
        jax.tree_util.tree_leaves(saved.critic.params), jax.tree_util.tree_leaves(jax.device_get(updated.critic.params)))]
    assert any(changed)
