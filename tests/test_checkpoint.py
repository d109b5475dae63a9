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


# ---------------------------------------------------------------- nothing silent (issue 33)

import glob  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from dodgerl import checkpoint as ck  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def pixel_agent():
    obs_space = gymnasium.spaces.Box(0, 255, (64, 64, 3), np.uint8)
    act_space = gymnasium.spaces.Box(-1.0, 1.0, (2,), np.float32)
    return sac.create(jax.random.PRNGKey(0), obs_space, act_space, sac.SACConfig(batch_size=8))


def vector_agent():
    obs_space = gymnasium.spaces.Box(-1.0, 1.0, (8,), np.float32)
    act_space = gymnasium.spaces.Box(-1.0, 1.0, (2,), np.float32)
    return sac.create(jax.random.PRNGKey(0), obs_space, act_space,
                      sac.SACConfig(batch_size=8, net_arch=(16, 16)))


def two_checkpoints(run_dir, agent):
    checkpoints = RunCheckpoints(run_dir, keep=3)
    checkpoints.save(10, agent, {"step": 10})
    checkpoints.save(20, agent, {"step": 20}, wait=False)
    checkpoints.close()
    return run_dir / "checkpoints" / "10", run_dir / "checkpoints" / "20"


def largest_data_file(step_dir):
    return Path(max(glob.glob(str(step_dir / "agent" / "**" / "d" / "*"), recursive=True),
                    key=os.path.getsize))


def test_every_checkpoint_records_a_checksum_of_each_file_once_committed(tmp_path):
    first, second = two_checkpoints(tmp_path, vector_agent())
    for step_dir in (first, second):  # a waited save and a background one
        assert (step_dir / ck.MANIFEST_NAME).is_file()
        assert ck.verify_manifest(step_dir) is True
    files = {p.relative_to(first).as_posix() for p in first.rglob("*") if p.is_file()}
    listed = set(__import__("json").loads((first / ck.MANIFEST_NAME).read_text())["files"])
    assert listed == files - {ck.MANIFEST_NAME}


def test_flipped_bytes_in_a_data_file_skip_the_checkpoint_for_the_previous_one(tmp_path):
    agent = pixel_agent()
    first, second = two_checkpoints(tmp_path, agent)
    data = largest_data_file(second)
    raw = bytearray(data.read_bytes())
    for i in range(1000, min(len(raw), 5096)):
        raw[i] ^= 0xFF  # 4 KB flipped: Orbax alone restores this without a word
    data.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match=f"skipping checkpoint: {second}.*fails its checksum"):
        restored, meta, used = ck.restore_first_good([second, first], agent)
    assert used == first and meta["step"] == 10
    with pytest.raises(ck.CheckpointError, match="fails its checksum"):
        restore(second, agent)


def test_restored_parameters_that_are_not_finite_skip_the_checkpoint(tmp_path):
    agent = vector_agent()
    leaves, treedef = jax.tree_util.tree_flatten(agent)
    index = next(i for i, leaf in enumerate(leaves) if np.asarray(leaf).dtype == np.float32
                 and np.asarray(leaf).size > 4)
    bad = list(leaves)
    bad[index] = jnp.asarray(np.asarray(leaves[index]).copy()).at[(0,) * np.ndim(leaves[index])].set(jnp.inf)
    checkpoints = RunCheckpoints(tmp_path, keep=3)
    checkpoints.save(10, agent, {"step": 10})
    checkpoints.save(20, jax.tree_util.tree_unflatten(treedef, bad), {"step": 20})
    checkpoints.close()
    step_dirs = [tmp_path / "checkpoints" / "20", tmp_path / "checkpoints" / "10"]
    with pytest.raises(ck.CheckpointError, match="not finite"):
        restore(step_dirs[0], agent)
    with pytest.warns(UserWarning, match="not finite"):
        _, meta, used = ck.restore_first_good(step_dirs, agent)
    assert used == step_dirs[1] and meta["step"] == 10


def test_a_checkpoint_without_its_metadata_never_blocks_a_later_save_of_its_step(tmp_path):
    agent = vector_agent()
    first, second = two_checkpoints(tmp_path, agent)
    (second / "_CHECKPOINT_METADATA").unlink()
    assert complete_checkpoints(tmp_path / "checkpoints") == [first]
    checkpoints = RunCheckpoints(tmp_path, keep=3)
    checkpoints.save(20, agent, {"step": 20, "again": True})
    checkpoints.close()
    assert complete_checkpoints(tmp_path / "checkpoints") == [first, second]
    _, meta = restore(second, agent)
    assert meta["again"] is True
    kept = list((tmp_path / ck.ABANDONED_DIR).glob("*/checkpoints/20"))
    assert len(kept) == 1 and not (kept[0] / "_CHECKPOINT_METADATA").exists()


def test_set_aside_broken_moves_unrestorable_checkpoints_and_keeps_good_ones(tmp_path):
    agent = vector_agent()
    first, second = two_checkpoints(tmp_path, agent)
    (second / "_CHECKPOINT_METADATA").unlink()
    data = largest_data_file(first)
    data.write_bytes(data.read_bytes()[:-8])
    moved = ck.set_aside_broken(tmp_path, tmp_path / "aside")
    assert sorted(p.name for p in moved) == ["10", "20"]
    assert all(p.parent == tmp_path / "aside" / "checkpoints" for p in moved)
    assert not first.exists() and not second.exists()
    good = tmp_path / "good"
    two_checkpoints(good, agent)
    assert ck.set_aside_broken(good) == []


NOISY_RESTORE = """
import sys, gymnasium, jax, numpy as np
from pathlib import Path
from dodgerl.agents import sac
from dodgerl import checkpoint as ck
obs_space = gymnasium.spaces.Box(0, 255, (64, 64, 3), np.uint8)
act_space = gymnasium.spaces.Box(-1.0, 1.0, (2,), np.float32)
agent = sac.create(jax.random.PRNGKey(0), obs_space, act_space, sac.SACConfig(batch_size=8))
step_dir = Path(sys.argv[1])
try:
    ck.restore(step_dir, agent)
except ck.CheckpointError as err:
    print("CheckpointError", err)
"""


def test_a_damaged_checkpoint_makes_one_error_not_hundreds_of_asyncio_tracebacks(tmp_path):
    _, second = two_checkpoints(tmp_path, pixel_agent())
    (second / ck.MANIFEST_NAME).unlink()  # as a checkpoint saved before manifests: Orbax reads it
    for path in second.joinpath("agent").rglob("*"):
        if path.is_file() and path.parent.name == "d":
            path.write_bytes(b"")
    child = subprocess.run([sys.executable, "-c", NOISY_RESTORE, str(second)], cwd=REPO, text=True,
                           capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert child.stdout.startswith("CheckpointError"), child.stderr[-2000:]
    assert "Event loop is closed" not in child.stderr
    assert "never retrieved" not in child.stderr
    assert len(child.stdout.splitlines()) == 1
