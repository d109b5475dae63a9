"""SAC agent: losses against hand-computed numpy values, gradient flow, K-step scan, config errors,
checkpoint round-trip. Networks are tiny so the file runs in seconds on a 2-core CPU."""

import dataclasses

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dodgerl.agents import sac
from dodgerl.envs.dodge_env import DODGE_OBS_XY
from dodgerl.networks import tanh_gaussian_log_prob

ACTION_SPACE = gymnasium.spaces.Box(-1.0, 1.0, (2,), np.float32)
VECTOR_SPACE = gymnasium.spaces.Box(-np.inf, np.inf, (6,), np.float32)
IMAGE_SPACE = gymnasium.spaces.Box(0, 255, (40, 40, 6), np.uint8)  # two stacked RGB frames
SET_SPACE = gymnasium.spaces.Box(-np.inf, np.inf, (5 + 3 * 6,), np.float32)  # dodge layout, 3 items
TINY = dict(net_arch=(16, 16), encoder_features=16, batch_size=8)
ACTION_XY = (0,)  # ACTION_SPACE's planar pair, as the dodge env publishes it


def random_batch(space, k, b, seed=0, action_dim=2, terminated_fraction=0.3):
    rng = np.random.default_rng(seed)

    def observations():
        if space.dtype == np.uint8:
            return rng.integers(0, 256, (k, b, *space.shape), dtype=np.uint8)
        return rng.normal(size=(k, b, *space.shape)).astype(np.float32)

    return sac.Batch(
        observations=observations(),
        actions=rng.uniform(-1, 1, (k, b, action_dim)).astype(np.float32),
        rewards=rng.normal(size=(k, b)).astype(np.float32),
        next_observations=observations(),
        terminated=(rng.uniform(size=(k, b)) < terminated_fraction).astype(np.float32),
    )


def to_numpy(tree):
    return jax.tree.map(np.asarray, tree)


def first_k(batch, i):
    return jax.tree.map(lambda x: x[i : i + 1], batch)


# ---------------------------------------------------------------- hand-computed loss values


def test_critic_target_takes_min_over_critics_and_masks_only_terminated():
    rewards = np.array([1.0, -0.5, 2.0], np.float32)
    terminated = np.array([0.0, 1.0, 0.0], np.float32)  # the third is a truncation: bootstraps
    next_q = np.array([[3.0, 10.0, -1.0], [2.0, 11.0, 4.0]], np.float32)
    next_log_probs = np.array([-1.0, 0.5, 0.25], np.float32)
    alpha, gamma = 0.2, 0.9
    # by hand: min Q = [2, 10, -1]; soft V = minQ - 0.2*logp = [2.2, 9.9, -1.05]
    expected = np.array([1.0 + 0.9 * 2.2, -0.5, 2.0 + 0.9 * -1.05], np.float32)
    for fn in (sac.critic_target, jax.jit(sac.critic_target, static_argnums=5)):
        got = fn(rewards, terminated, next_q, next_log_probs, jnp.float32(alpha), gamma)
        np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_critic_target_with_per_transition_discounts():
    # n-step transitions bootstrap with gamma**m of their own span m.
    rewards = np.array([1.0, -0.5, 2.0], np.float32)
    terminated = np.array([0.0, 1.0, 0.0], np.float32)
    next_q = np.array([[3.0, 10.0, -1.0], [2.0, 11.0, 4.0]], np.float32)
    next_log_probs = np.array([-1.0, 0.5, 0.25], np.float32)
    discounts = np.array([0.9**3, 0.9**2, 0.9], np.float32)
    expected = np.array([1.0 + 0.729 * 2.2, -0.5, 2.0 + 0.9 * -1.05], np.float32)
    got = sac.critic_target(rewards, terminated, next_q, next_log_probs, jnp.float32(0.2),
                            discounts)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_batch_discounts_replace_gamma_in_the_update():
    agent = sac.create(jax.random.key(0), VECTOR_SPACE, ACTION_SPACE, sac.SACConfig(**TINY))
    batch = jax.tree.map(lambda x: x[0], random_batch(VECTOR_SPACE, 1, 8, terminated_fraction=0.0))
    key = jax.random.key(3)

    def losses(b):
        _, metrics = sac.compute_losses(agent, agent.critic.params, agent.actor.params,
                                        agent.temperature.params, b, key)
        return {k: float(v) for k, v in metrics.items()}

    gamma = np.full(8, agent.config.gamma, np.float32)
    assert losses(batch.replace(discounts=gamma)) == pytest.approx(losses(batch), rel=1e-6)
    # A zero discount cuts the bootstrap exactly as termination does.
    no_bootstrap = losses(batch.replace(discounts=np.zeros(8, np.float32)))
    assert no_bootstrap == pytest.approx(losses(batch.replace(terminated=np.ones(8, np.float32))),
                                         rel=1e-6)
    assert no_bootstrap["critic_loss"] != pytest.approx(losses(batch)["critic_loss"], rel=1e-3)
    # Through the jitted K-step update too, and the shape is checked.
    k_batch = random_batch(VECTOR_SPACE, 2, 8)
    with_gamma = k_batch.replace(discounts=np.full((2, 8), agent.config.gamma, np.float32))
    a1, m1 = sac.create(jax.random.key(0), VECTOR_SPACE, ACTION_SPACE,
                        sac.SACConfig(**TINY)).update(k_batch, key)
    a2, m2 = sac.create(jax.random.key(0), VECTOR_SPACE, ACTION_SPACE,
                        sac.SACConfig(**TINY)).update(with_gamma, key)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6),
                 to_numpy(a1.critic.params), to_numpy(a2.critic.params))
    with pytest.raises(ValueError, match="discounts"):
        agent.update(k_batch.replace(discounts=np.ones(8, np.float32)), key)


def test_critic_loss_is_half_squared_error_summed_over_critics():
    q = np.array([[1.0, 2.0], [0.0, 4.0]], np.float32)
    target = np.array([2.0, 2.0], np.float32)
    # critic 0: mean(0.5*[1, 0]) = 0.25 ; critic 1: mean(0.5*[4, 4]) = 2.0
    for fn in (sac.critic_loss, jax.jit(sac.critic_loss)):
        np.testing.assert_allclose(fn(q, target), 2.25, rtol=1e-6)


def test_actor_loss_uses_min_q_and_temperature():
    log_probs = np.array([-1.0, 0.5], np.float32)
    q = np.array([[3.0, 1.0], [2.0, 5.0]], np.float32)
    # min q = [2, 1]; mean(0.1*logp - minq) = mean([-0.1-2, 0.05-1]) = -1.525
    for fn in (sac.actor_loss, jax.jit(sac.actor_loss)):
        np.testing.assert_allclose(fn(log_probs, q, jnp.float32(0.1)), -1.525, rtol=1e-6)


def test_temperature_loss_value_and_gradient_direction():
    log_probs = np.array([-1.0, -2.0], np.float32)  # entropy 1.5
    # -log_alpha * mean(logp + target) = -0.3 * (-1.5 - 2) = 1.05
    np.testing.assert_allclose(sac.temperature_loss(0.3, log_probs, -2.0), 1.05, rtol=1e-6)
    grad = jax.grad(sac.temperature_loss)
    # entropy 1.5 below target 2.0 -> gradient descent must raise alpha (negative gradient)
    assert grad(0.3, log_probs, 2.0) < 0
    # entropy 1.5 above target -2.0 -> alpha must fall
    assert grad(0.3, log_probs, -2.0) > 0


def test_tanh_gaussian_log_prob_matches_change_of_variables():
    rng = np.random.default_rng(0)
    u = rng.normal(size=(5, 3)) * 2
    mean, log_std = rng.normal(size=(5, 3)), rng.uniform(-2, 1, size=(5, 3))
    std = np.exp(log_std)
    normal_logpdf = -0.5 * ((u - mean) / std) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi)
    expected = np.sum(normal_logpdf - np.log(1 - np.tanh(u) ** 2), axis=-1)
    got = tanh_gaussian_log_prob(*(jnp.asarray(x, jnp.float32) for x in (u, mean, log_std)))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_tanh_gaussian_log_prob_stays_finite_for_saturated_actions():
    got = tanh_gaussian_log_prob(jnp.array([[30.0, -30.0]]), jnp.zeros((1, 2)), jnp.zeros((1, 2)))
    assert np.all(np.isfinite(got))


def test_polyak_update_matches_numpy():
    params = {"w": np.array([1.0, 2.0], np.float32)}
    target = {"w": np.array([0.0, 4.0], np.float32)}
    got = sac.polyak_update(params, target, 0.1)
    np.testing.assert_allclose(got["w"], [0.1, 0.9 * 4 + 0.2], rtol=1e-6)


def test_update_moves_target_by_polyak_and_not_more():
    # learning rates 0: the online critic stays put, so the target must be tau*online+(1-tau)*old
    cfg = sac.SACConfig(**TINY, vector_encoder_arch=(8,), tau=0.25, actor_lr=0.0, critic_lr=0.0,
                        temperature_lr=0.0)
    agent = sac.create(jax.random.key(0), VECTOR_SPACE, ACTION_SPACE, cfg)
    # make the target differ from the online critic first
    agent = agent.replace(critic=agent.critic.replace(
        target_params=jax.tree.map(lambda x: x + 1.0, agent.critic.target_params)))
    online, old_target = to_numpy(agent.critic.params), to_numpy(agent.critic.target_params)
    agent, _ = agent.update(random_batch(VECTOR_SPACE, 1, 8), jax.random.key(1))
    expected = jax.tree.map(lambda p, t: 0.25 * p + 0.75 * t, online, old_target)
    jax.tree.map(lambda e, g: np.testing.assert_allclose(g, e, rtol=1e-6, atol=1e-6),
                 expected, to_numpy(agent.critic.target_params))
    jax.tree.map(np.testing.assert_array_equal, online, to_numpy(agent.critic.params))


def test_network_forward_matches_numpy_on_fixed_params():
    cfg = sac.SACConfig(net_arch=(4,), n_critics=3)
    agent = sac.create(jax.random.key(3), VECTOR_SPACE, ACTION_SPACE, cfg)
    nets = agent.networks
    obs = np.random.default_rng(0).normal(size=(5, 6)).astype(np.float32)
    act = np.random.default_rng(1).uniform(-1, 1, size=(5, 2)).astype(np.float32)
    head = to_numpy(agent.critic.params["head"])
    q = np.asarray(nets.critic_head.apply({"params": agent.critic.params["head"]}, obs, act))
    assert q.shape == (3, 5)
    layers = head["VmapEnsemble_0"] if "VmapEnsemble_0" in head else next(iter(head.values()))
    mlp = layers["MLP_0"]
    x = np.concatenate([obs, act], -1)
    for i in range(3):
        h = np.maximum(x @ mlp["Dense_0"]["kernel"][i] + mlp["Dense_0"]["bias"][i], 0)
        expected = (h @ mlp["Dense_1"]["kernel"][i] + mlp["Dense_1"]["bias"][i])[:, 0]
        np.testing.assert_allclose(q[i], expected, rtol=1e-5, atol=1e-5)
    assert not np.allclose(q[0], q[1])  # members are initialised independently


# ---------------------------------------------------------------- gradient flow


def _loss_grads(agent, batch, term):
    """Gradient of one loss term w.r.t. (critic params, actor params)."""

    def loss(critic_params, actor_params, agent, batch):
        _, metrics = sac.compute_losses(
            agent, critic_params, actor_params, agent.temperature.params, batch, jax.random.key(7)
        )
        return metrics[term]

    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
    return grad(agent.critic.params, agent.actor.params, agent, batch)


def _nonzero(tree):
    return any(np.any(np.asarray(x) != 0) for x in jax.tree.leaves(tree))


def _encoder_config(space, **kw):
    """TINY with a parameterised encoder: NatureCNN for images, an (8,) MLP for VECTOR_SPACE,
    the set encoder for SET_SPACE."""
    if space is SET_SPACE:
        return sac.SACConfig(**TINY, vector_encoder="set", set_layout=(5, 6), set_encoder_arch=(8,),
                             **kw)
    return sac.SACConfig(**TINY, vector_encoder_arch=(8,), **kw)


ENCODER_SPACES = pytest.mark.parametrize("space", [VECTOR_SPACE, SET_SPACE, IMAGE_SPACE],
                                         ids=["vector", "set", "image"])


@ENCODER_SPACES
def test_critic_sharing_encoder_trained_by_critic_loss_only(space):
    cfg = _encoder_config(space, encoder_sharing="critic")
    agent = sac.create(jax.random.key(0), space, ACTION_SPACE, cfg)
    assert set(agent.actor.params) == {"head"}  # the actor owns no encoder
    batch = first_k(random_batch(space, 1, 8), 0)
    batch = jax.tree.map(lambda x: x[0], batch)
    critic_g, actor_g = _loss_grads(agent, batch, "actor_loss")
    assert not _nonzero(critic_g), "the actor loss must not touch the critic (encoder included)"
    assert _nonzero(actor_g["head"])
    critic_g, actor_g = _loss_grads(agent, batch, "critic_loss")
    assert _nonzero(critic_g["encoder"]) and _nonzero(critic_g["head"])
    assert not _nonzero(actor_g)

    # and through a whole update with the critic frozen, the shared encoder stays put
    frozen = sac.create(jax.random.key(0), space, ACTION_SPACE,
                        dataclasses.replace(cfg, critic_lr=0.0))
    before = to_numpy(frozen.critic.params["encoder"])
    actor_before = to_numpy(frozen.actor.params)
    frozen, _ = frozen.update(random_batch(space, 1, 8), jax.random.key(1))
    jax.tree.map(np.testing.assert_array_equal, before, to_numpy(frozen.critic.params["encoder"]))
    assert _nonzero(jax.tree.map(lambda a, b: a - b, actor_before, to_numpy(frozen.actor.params)))


def test_layernorm_tanh_trunk_is_part_of_the_critic_encoder_and_trained_by_critic_loss():
    cfg = sac.SACConfig(**TINY, encoder_output="layernorm_tanh")
    agent = sac.create(jax.random.key(0), IMAGE_SPACE, ACTION_SPACE, cfg)
    assert "LayerNorm_0" in agent.critic.params["encoder"]
    batch = jax.tree.map(lambda x: x[0], random_batch(IMAGE_SPACE, 1, 8))
    critic_g, actor_g = _loss_grads(agent, batch, "critic_loss")
    assert _nonzero(critic_g["encoder"]["LayerNorm_0"])
    critic_g, _ = _loss_grads(agent, batch, "actor_loss")
    assert not _nonzero(critic_g)
    agent, metrics = agent.update(random_batch(IMAGE_SPACE, 2, 8), jax.random.key(1))
    assert all(np.isfinite(np.asarray(v)).all() for v in metrics.values())


@ENCODER_SPACES
def test_separate_encoders_each_trained_by_own_loss(space):
    cfg = _encoder_config(space, encoder_sharing="separate")
    agent = sac.create(jax.random.key(0), space, ACTION_SPACE, cfg)
    batch = jax.tree.map(lambda x: x[0], random_batch(space, 1, 8))
    critic_g, actor_g = _loss_grads(agent, batch, "actor_loss")
    assert not _nonzero(critic_g)
    assert _nonzero(actor_g["encoder"]) and _nonzero(actor_g["head"])
    critic_g, actor_g = _loss_grads(agent, batch, "critic_loss")
    assert _nonzero(critic_g["encoder"])
    assert not _nonzero(actor_g)


@pytest.mark.parametrize("output", ["relu", "layernorm_tanh"])
def test_convs_sharing_actor_trains_its_own_trunk_on_the_critics_detached_convs(output):
    """DrQ-v2's sharing: the critic loss trains the whole critic encoder (convs and trunk); the
    actor loss trains the actor head's own trunk and MLP and never the critic's convs."""
    cfg = sac.SACConfig(**TINY, encoder_sharing="convs", encoder_output=output)
    agent = sac.create(jax.random.key(0), IMAGE_SPACE, ACTION_SPACE, cfg)
    assert set(agent.actor.params) == {"head"}
    trunk = agent.actor.params["head"]["Trunk_Dense"]["kernel"]
    conv_out = agent.critic.params["encoder"]["Dense_0"]["kernel"].shape[0]
    assert trunk.shape == (conv_out, TINY["encoder_features"])  # reads the conv output
    assert ("Trunk_LayerNorm" in agent.actor.params["head"]) == (output == "layernorm_tanh")
    batch = jax.tree.map(lambda x: x[0], random_batch(IMAGE_SPACE, 1, 8))
    critic_g, actor_g = _loss_grads(agent, batch, "actor_loss")
    assert not _nonzero(critic_g), "the actor loss must not touch the critic (convs included)"
    assert _nonzero(actor_g["head"]["Trunk_Dense"]) and _nonzero(actor_g["head"]["MLP_0"])
    critic_g, actor_g = _loss_grads(agent, batch, "critic_loss")
    assert _nonzero(critic_g["encoder"]["Conv_0"]) and _nonzero(critic_g["encoder"]["Dense_0"])
    assert not _nonzero(actor_g)


def test_convs_sharing_acts_through_the_critics_convs_and_the_actors_trunk():
    from dodgerl.networks import NatureCNN, TanhGaussianActorHead

    cfg = sac.SACConfig(**TINY, encoder_sharing="convs", encoder_output="layernorm_tanh")
    agent = sac.create(jax.random.key(0), IMAGE_SPACE, ACTION_SPACE, cfg)
    obs = np.random.default_rng(1).integers(0, 256, (3, *IMAGE_SPACE.shape), dtype=np.uint8)
    nets = agent.networks
    # The conv output by hand: the critic's CNN up to its last conv, flattened.
    torso = nets.encoder.clone(returns="torso").apply({"params": agent.critic.params["encoder"]},
                                                      obs)
    features, torso_too = nets.encoder.clone(returns="both").apply(
        {"params": agent.critic.params["encoder"]}, obs)
    np.testing.assert_array_equal(torso, torso_too)
    assert isinstance(nets.encoder, NatureCNN) and torso.shape == (3, agent.actor.params["head"][
        "Trunk_Dense"]["kernel"].shape[0])
    np.testing.assert_allclose(features, nets.encoder.apply(
        {"params": agent.critic.params["encoder"]}, obs), rtol=1e-6, atol=1e-6)
    assert isinstance(nets.actor_head, TanhGaussianActorHead)
    mean, _ = nets.actor_head.apply({"params": agent.actor.params["head"]}, torso)
    np.testing.assert_allclose(agent.act(obs, deterministic=True), np.tanh(mean), rtol=1e-5,
                               atol=1e-6)


def test_convs_sharing_needs_images():
    cfg = sac.SACConfig(**TINY, vector_encoder_arch=(8,), encoder_sharing="convs")
    with pytest.raises(sac.ConfigError, match=r"encoder_sharing='convs'.*6-dim vector"):
        sac.create(jax.random.key(0), VECTOR_SPACE, ACTION_SPACE, cfg)


# ---------------------------------------------------------------- the scanned update


@pytest.mark.parametrize("space", [VECTOR_SPACE, IMAGE_SPACE], ids=["vector", "image"])
def test_k_stacked_steps_equal_k_single_steps(space):
    cfg = sac.SACConfig(**TINY, vector_encoder_arch=(8,), augmentation=True, actor_lr=1e-2,
                        critic_lr=1e-2, temperature_lr=1e-2)
    k = 3
    batch, key = random_batch(space, k, 8, seed=4), jax.random.key(42)
    stacked = sac.create(jax.random.key(0), space, ACTION_SPACE, cfg)
    stacked, metrics = stacked.update(batch, key)
    single = sac.create(jax.random.key(0), space, ACTION_SPACE, cfg)
    single_metrics = []
    for i, step_key in enumerate(jax.random.split(key, k)):
        single, m = single.update(first_k(batch, i), step_key)
        single_metrics.append(m)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5),
                 to_numpy(stacked), to_numpy(single))
    assert int(stacked.critic.step) == k
    for name in metrics:  # metrics are the mean over the K steps
        np.testing.assert_allclose(
            metrics[name], np.mean([float(m[name]) for m in single_metrics]), rtol=1e-3,
            atol=1e-4)


def test_update_does_not_recompile():
    cfg = sac.SACConfig(**TINY, gamma=0.97)  # a config no other test compiles
    agent = sac.create(jax.random.key(0), VECTOR_SPACE, ACTION_SPACE, cfg)
    batch = random_batch(VECTOR_SPACE, 2, 8)
    before = sac._update_jit._cache_size()
    for i in range(4):
        agent, _ = agent.update(batch, jax.random.key(i))
    assert sac._update_jit._cache_size() == before + 1
    # a fresh agent with the same spaces and config (e.g. a restore template) reuses the program
    other = sac.create(jax.random.key(5), VECTOR_SPACE, ACTION_SPACE, cfg)
    other.update(batch, jax.random.key(0))
    assert sac._update_jit._cache_size() == before + 1


def test_act_shapes_bounds_and_no_recompile():
    cfg = sac.SACConfig(**TINY, gamma=0.96)
    agent = sac.create(jax.random.key(0), IMAGE_SPACE, ACTION_SPACE, cfg)
    obs = random_batch(IMAGE_SPACE, 1, 5).observations[0]
    before = sac._act_jit._cache_size()
    single = agent.act(obs[0], jax.random.key(0))
    batched = agent.act(obs, jax.random.key(1))
    agent.act(obs, jax.random.key(2))
    assert single.shape == (2,) and batched.shape == (5, 2)
    assert sac._act_jit._cache_size() == before + 2  # one per input shape, none after
    det = agent.act(jnp.asarray(obs), None, deterministic=True)
    np.testing.assert_array_equal(det, agent.act(obs, jax.random.key(9), deterministic=True))
    assert np.all(np.abs(np.asarray(batched)) <= 1.0)
    with pytest.raises(ValueError, match="shape"):
        agent.act(obs[:, :20], jax.random.key(0))


def test_update_rejects_batch_without_k_axis():
    agent = sac.create(jax.random.key(0), VECTOR_SPACE, ACTION_SPACE, sac.SACConfig(**TINY))
    batch = jax.tree.map(lambda x: x[0], random_batch(VECTOR_SPACE, 1, 8))
    with pytest.raises(ValueError, match="K"):
        agent.update(batch, jax.random.key(0))


def test_agent_is_one_pytree_that_orbax_round_trips(tmp_path):
    import orbax.checkpoint as ocp

    cfg = sac.SACConfig(**TINY, encoder_sharing="separate")
    agent = sac.create(jax.random.key(0), IMAGE_SPACE, ACTION_SPACE, cfg)
    agent, _ = agent.update(random_batch(IMAGE_SPACE, 2, 8), jax.random.key(1))
    as_numpy = jax.tree.map(np.asarray, agent)
    assert isinstance(as_numpy, sac.SACAgent)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "agent", agent)
        checkpointer.wait_until_finished()
        template = sac.create(jax.random.key(9), IMAGE_SPACE, ACTION_SPACE, cfg)
        restored = checkpointer.restore(tmp_path / "agent", template)
    assert isinstance(restored, sac.SACAgent)
    assert jax.tree.structure(restored) == jax.tree.structure(agent)
    jax.tree.map(np.testing.assert_array_equal, as_numpy, to_numpy(restored))
    restored.update(random_batch(IMAGE_SPACE, 2, 8), jax.random.key(2))  # still trainable


# ---------------------------------------------------------------- configuration errors


@pytest.mark.parametrize(
    "bad, name",
    [
        ({"learning_rate": 1e-3}, "learning_rate"),
        ({"actor_lr": -1e-3}, "actor_lr"),
        ({"critic_lr": -1.0}, "critic_lr"),
        ({"tau": 0.0}, "tau"),
        ({"tau": 1.5}, "tau"),
        ({"gamma": 1.01}, "gamma"),
        ({"n_critics": 0}, "n_critics"),
        ({"encoder_sharing": "actor"}, "encoder_sharing"),
        ({"net_arch": [256, -1]}, "net_arch"),
        ({"initial_temperature": 0.0}, "initial_temperature"),
        ({"augmentation": "yes"}, "augmentation"),
        ({"encoder_output": "gelu"}, "encoder_output"),
        ({"critic_layer_norm": 1}, "critic_layer_norm"),
        ({"vector_encoder": "deepsets"}, "vector_encoder"),
        ({"set_layout": [5]}, "set_layout"),
        ({"set_layout": [5, 1]}, "set_layout"),
        ({"set_encoder_arch": []}, "set_encoder_arch"),
        ({"vector_encoder": "set", "vector_encoder_arch": [64]}, "vector_encoder_arch"),
        ({"symmetry": "c4"}, "symmetry"),
        ({"symmetry_obs_xy": [0, 1]}, "symmetry_obs_xy"),
        ({"symmetry_action_xy": [-1]}, "symmetry_action_xy"),
        ({"symmetry_action_xy": 0}, "symmetry_action_xy"),
    ],
)
def test_from_dict_rejects_bad_config_naming_the_key(bad, name):
    with pytest.raises(ValueError, match=name):
        sac.SACConfig.from_dict(bad)


def test_from_dict_accepts_yaml_lists():
    cfg = sac.SACConfig.from_dict({"net_arch": [64, 64], "gamma": 0.98})
    assert cfg.net_arch == (64, 64) and cfg.gamma == 0.98
    assert sac.SACConfig.from_dict(cfg.to_dict()) == cfg
    hash(cfg)  # static data of the jitted update


def test_create_rejects_symmetry_it_cannot_apply():
    wide = gymnasium.spaces.Box(0, 255, (40, 48, 3), np.uint8)
    with pytest.raises(ValueError, match="symmetry='d4': the images must be square"):
        sac.create(jax.random.key(0), wide, ACTION_SPACE,
                   sac.SACConfig(**TINY, symmetry="d4", symmetry_action_xy=ACTION_XY))
    with pytest.raises(ValueError, match="symmetry_action_xy=\\[1\\].*the action has 2"):
        sac.create(jax.random.key(0), IMAGE_SPACE, ACTION_SPACE,
                   sac.SACConfig(**TINY, symmetry="d4", symmetry_action_xy=(1,)))
    sac.create(jax.random.key(0), IMAGE_SPACE, ACTION_SPACE,
               sac.SACConfig(**TINY, symmetry="d4", symmetry_action_xy=ACTION_XY))
    # The pairs of the 65-dim dodge observation: a 6-dim one does not have them.
    with pytest.raises(ValueError, match="symmetry_obs_xy=.*the observation has 6"):
        sac.create(jax.random.key(0), VECTOR_SPACE, ACTION_SPACE,
                   sac.SACConfig(**TINY, symmetry="d4", symmetry_obs_xy=DODGE_OBS_XY,
                                 symmetry_action_xy=ACTION_XY))
    with pytest.raises(ValueError, match="symmetry_action_xy=\\[1\\].*the action has 2"):
        sac.create(jax.random.key(0), VECTOR_SPACE, ACTION_SPACE,
                   sac.SACConfig(**TINY, symmetry="d4", symmetry_obs_xy=(0,), symmetry_action_xy=(1,)))
    sac.create(jax.random.key(0), VECTOR_SPACE, ACTION_SPACE,
               sac.SACConfig(**TINY, symmetry="d4", symmetry_obs_xy=(0, 2),
                             symmetry_action_xy=ACTION_XY))  # fits: fine


@pytest.mark.parametrize(
    "observation_space, message",
    [
        (gymnasium.spaces.Discrete(4), "Discrete"),
        (gymnasium.spaces.Box(0, 255, (64,), np.uint8), "cannot encode"),
        (gymnasium.spaces.Box(0, 1, (2, 40, 40, 3), np.float32), "cannot encode"),
        (gymnasium.spaces.Box(0, 255, (40, 40, 3), np.float32), "cannot encode"),
        (gymnasium.spaces.Box(0, 255, (16, 16, 3), np.uint8), "too small"),
    ],
)
def test_create_rejects_observation_space_it_cannot_encode(observation_space, message):
    with pytest.raises(ValueError, match=message):
        sac.create(jax.random.key(0), observation_space, ACTION_SPACE, sac.SACConfig(**TINY))


def test_create_rejects_a_set_layout_the_observation_does_not_have():
    cfg = sac.SACConfig(**TINY, vector_encoder="set", set_layout=(5, 6))
    with pytest.raises(ValueError, match=r"set_layout=\[5, 6\]: a 6-dim observation"):
        sac.create(jax.random.key(0), VECTOR_SPACE, ACTION_SPACE, cfg)
    sac.create(jax.random.key(0), SET_SPACE, ACTION_SPACE, cfg)  # 5 + 3 items of 6: fine


@pytest.mark.parametrize(
    "action_space",
    [gymnasium.spaces.Box(-2.0, 2.0, (1,), np.float32), gymnasium.spaces.Discrete(3)],
)
def test_create_rejects_action_space_outside_unit_box(action_space):
    with pytest.raises(ValueError, match="action space"):
        sac.create(jax.random.key(0), VECTOR_SPACE, action_space, sac.SACConfig(**TINY))


def test_bf16_augmented_image_update_gives_finite_metrics():
    cfg = sac.SACConfig(**TINY, bf16_encoder=True, augmentation=True, augmentation_pad=2)
    agent = sac.create(jax.random.key(0), IMAGE_SPACE, ACTION_SPACE, cfg)
    agent, metrics = agent.update(random_batch(IMAGE_SPACE, 2, 8), jax.random.key(1))
    assert all(np.isfinite(float(v)) for v in metrics.values())
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(agent.critic.params))


_IMPL_CASES = [(space, arch, sharing) for space, arch in ((VECTOR_SPACE, (8,)), (VECTOR_SPACE, ()),
                                                     (IMAGE_SPACE, (8,)))
               for sharing in ("critic", "separate", "convs")
               if sharing != "convs" or space is IMAGE_SPACE]  # convs: images only


@pytest.mark.parametrize("space, vector_arch, sharing", _IMPL_CASES,
                         ids=[f"{'image' if s is IMAGE_SPACE else 'vector' if a else 'vector_identity_encoder'}-{m}"
                              for s, a, m in _IMPL_CASES])
def test_impl_options_do_not_change_the_update(space, vector_arch, sharing):
    """ImplOptions change how the step is computed, never what: convs as GEMMs (the default at
    this image size) or as cuDNN convolutions, either over space-to-depth images, one batched
    online-encoder call, any scan unroll, next-obs encoders stacked all give the default's agent
    up to float rounding."""
    cfg = sac.SACConfig(**TINY, vector_encoder_arch=vector_arch, encoder_sharing=sharing,
                        augmentation=True, actor_lr=1e-3, critic_lr=1e-3, temperature_lr=1e-3)
    batch, key = random_batch(space, 3, 8, seed=2), jax.random.key(3)
    results = []
    # NatureCNN options: the same program for vector observations, so not compared there.
    image_only = ({"conv1_space_to_depth": True}, {"conv_gemm": False})
    for changes in ({}, {"concat_online": True}, {"scan_unroll": 1}, {"scan_unroll": 8},
                    {"stack_next": True}, *(image_only if space is IMAGE_SPACE else ())):
        with_impl = dataclasses.replace(cfg, impl=sac.ImplOptions(**changes))
        agent = sac.create(jax.random.key(0), space, ACTION_SPACE, with_impl)
        agent, metrics = agent.update(batch, key)
        # The agents differ in their static config (impl) only: compare the arrays.
        results.append((jax.tree.leaves(to_numpy(agent)), to_numpy(metrics)))
    # atol: Adam divides by sqrt(v), so a gradient entry near zero turns float-rounding noise
    # into a visible fraction of one step (lr 1e-3); 1e-4 is a tenth of a step.
    for other in results[1:]:
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4),
                     results[0], other)


@pytest.mark.parametrize("backend", ["gpu", "cpu"])
def test_convs_are_gemms_by_default_where_measured_faster(backend, monkeypatch):
    """``conv_gemm=None`` picks the GEMM form up to CONV_GEMM_MAX_SIDE on a GPU and cuDNN
    convolutions above, GEMMs at every size on the CPU (where each was measured faster); an
    explicit setting wins."""
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    side = sac.CONV_GEMM_MAX_SIDE
    auto = (True, True, backend == "cpu")
    for conv_gemm, expected in ((None, auto), (False, (False,) * 3), (True, (True,) * 3)):
        cfg = sac.SACConfig(**TINY, impl=sac.ImplOptions(conv_gemm=conv_gemm))
        got = tuple(sac.build_networks(cfg, (s, s, 3), 2).encoder.conv_gemm
                    for s in (84, side, side + 1))
        assert got == expected, (conv_gemm, got)


@pytest.mark.parametrize("sharing, bf16_dense", [("critic", True), ("separate", False)])
def test_precast_encoder_gives_the_same_bf16_update(sharing, bf16_dense):
    """The bf16 copies carried between the steps of one call (``precast_encoder``) are exactly the
    conversions they replace: the agent after a K = 3 call matches the one computed with the
    conversions at each use, and the copies take the path of the gradient, not a new one."""
    cfg = sac.SACConfig(**TINY, bf16_encoder=True, encoder_sharing=sharing, augmentation=True,
                        actor_lr=1e-3, critic_lr=1e-3, temperature_lr=1e-3)
    batch, key = random_batch(IMAGE_SPACE, 3, 8, seed=4), jax.random.key(5)
    results = []
    for precast in (False, True):
        with_impl = dataclasses.replace(
            cfg, impl=sac.ImplOptions(precast_encoder=precast, bf16_dense=bf16_dense))
        agent = sac.create(jax.random.key(0), IMAGE_SPACE, ACTION_SPACE, with_impl)
        carried = sac.precast_encoders(agent)
        assert (carried is not None) == precast
        if precast:
            dense = carried["target"]["Dense_0"]["kernel"]
            assert dense.dtype == (jnp.bfloat16 if bf16_dense else jnp.float32)
            assert carried["critic"]["Conv_0"]["kernel"].dtype == jnp.bfloat16
            assert ("actor" in carried) == (sharing == "separate")
        agent, metrics = agent.update(batch, key)
        results.append((agent, to_numpy(metrics)))
    # The encoder moved (so equality is not two untouched copies of the initial parameters).
    initial = to_numpy(sac.create(jax.random.key(0), IMAGE_SPACE, ACTION_SPACE, cfg))
    assert not np.array_equal(initial.critic.params["encoder"]["Conv_0"]["kernel"],
                              np.asarray(results[1][0].critic.params["encoder"]["Conv_0"]["kernel"]))
    # The agents differ in their static config (impl) only: compare the arrays.
    before, after = ((jax.tree.leaves(to_numpy(a)), m) for a, m in results)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                 before, after)


def test_precast_params_converts_only_what_the_encoder_computes_in_low_precision():
    from dodgerl.networks import MLPEncoder, NatureCNN, precast_params
    x = jnp.zeros((1, 40, 40, 3), jnp.uint8)
    cnn = NatureCNN(features=8, dtype=jnp.bfloat16, dense_dtype=jnp.float32,
                    output="layernorm_tanh")
    params = cnn.init(jax.random.key(0), x)["params"]
    cast = precast_params(cnn, params)
    dtypes = {name: {str(leaf.dtype) for leaf in jax.tree.leaves(layer)}
              for name, layer in cast.items()}
    assert dtypes == {"Conv_0": {"bfloat16"}, "Conv_1": {"bfloat16"}, "Conv_2": {"bfloat16"},
                      "Dense_0": {"float32"}, "LayerNorm_0": {"float32"}}
    np.testing.assert_array_equal(cnn.apply({"params": params}, x), cnn.apply({"params": cast}, x))
    mlp_params = MLPEncoder((4,)).init(jax.random.key(0), jnp.zeros((1, 3)))["params"]
    assert precast_params(MLPEncoder((4,)), mlp_params) is mlp_params


# ---------------------------------------------------------------- symmetry augmentation

SET_XY = (0, 2) + tuple(5 + 6 * row + j for row in range(3) for j in (0, 2))  # SET_SPACE's pairs


@pytest.mark.parametrize("group", ["flip_x", "d4"])
def test_symmetry_moves_observation_next_observation_and_action_together(group):
    cfg = sac.SACConfig(**TINY, symmetry=group, symmetry_obs_xy=SET_XY,
                        symmetry_action_xy=ACTION_XY)
    batch = jax.tree.map(lambda x: x[0], random_batch(SET_SPACE, 1, 256))
    obs = np.asarray(batch.observations)
    # The action is the player's position and the next observation twice the observation, so
    # that whether one element moved all three shows.
    batch = batch.replace(actions=obs[:, 0:2].copy(), next_observations=2 * obs)
    out = jax.tree.map(np.asarray, sac.apply_symmetry(cfg, jax.random.key(5), batch))
    np.testing.assert_allclose(out.actions, out.observations[:, 0:2], rtol=1e-6)
    np.testing.assert_allclose(out.next_observations, 2 * out.observations, rtol=1e-6)
    np.testing.assert_array_equal(out.rewards, batch.rewards)
    np.testing.assert_array_equal(out.terminated, batch.terminated)
    pairs = np.array([[i, i + 1] for i in SET_XY])
    kept = np.setdiff1d(np.arange(obs.shape[1]), pairs.ravel())
    np.testing.assert_array_equal(out.observations[:, kept], obs[:, kept])  # flags, distances
    np.testing.assert_allclose(np.linalg.norm(out.observations[:, pairs], axis=-1),
                               np.linalg.norm(obs[:, pairs], axis=-1), rtol=1e-6)
    moved = ~np.isclose(out.observations, obs).all(axis=1)
    assert 0.3 < moved.mean() < 0.7 if group == "flip_x" else 0.75 < moved.mean() < 0.99
    if group == "flip_x":
        np.testing.assert_array_equal(out.observations[:, pairs[:, 1]], obs[:, pairs[:, 1]])


@pytest.mark.parametrize("group", ["flip_x", "d4"])
def test_image_symmetry_moves_observation_next_observation_and_action_together(group):
    # Each image holds one lit pixel per frame; the action is that pixel's planar position (x
    # along the columns, y against the rows) and the next observation's pixel is the same, so
    # whether one element moved all three shows.
    size, b, rng = 40, 256, np.random.default_rng(1)
    cfg = sac.SACConfig(**TINY, symmetry=group, symmetry_action_xy=ACTION_XY)
    rc = rng.integers(0, size, (b, 2))
    obs = np.zeros((b, size, size, 6), np.uint8)
    obs[np.arange(b), rc[:, 0], rc[:, 1], :] = 255
    m = (size - 1) / 2
    actions = np.stack([rc[:, 1] - m, m - rc[:, 0]], axis=1).astype(np.float32) / m
    batch = sac.Batch(observations=obs, actions=actions, rewards=rng.normal(size=b).astype(np.float32),
                      next_observations=obs.copy(), terminated=np.zeros(b, np.float32))
    out = jax.tree.map(np.asarray, sac.apply_symmetry(cfg, jax.random.key(5), batch))
    np.testing.assert_array_equal(out.next_observations, out.observations)
    lit = np.argwhere(out.observations[..., 0] == 255)  # (sample, row, col), one per sample
    np.testing.assert_array_equal(lit[:, 0], np.arange(b))
    where = np.stack([lit[:, 2] - m, m - lit[:, 1]], axis=1) / m
    np.testing.assert_allclose(out.actions, where, atol=1e-6)
    assert (out.observations.sum(axis=(1, 2)) == obs.sum(axis=(1, 2))).all()  # every frame alike
    moved = ~np.isclose(out.actions, actions).all(axis=1)
    assert 0.3 < moved.mean() < 0.7 if group == "flip_x" else 0.75 < moved.mean() < 0.99
    if group == "flip_x":
        np.testing.assert_array_equal(out.actions[:, 1], actions[:, 1])


@pytest.mark.parametrize("space", ["set", "image"])
def test_update_with_symmetry_is_the_plain_update_of_the_transformed_batch(space):
    # Images: with random shifts, which come after the symmetry (same keys in both agents).
    space, extra = ((SET_SPACE, {"symmetry_obs_xy": SET_XY}) if space == "set"
                    else (IMAGE_SPACE, {"augmentation": True}))
    plain = sac.create(jax.random.key(0), space, ACTION_SPACE,
                       sac.SACConfig(**TINY, augmentation=extra.get("augmentation", False)))
    cfg = sac.SACConfig(**TINY, symmetry="d4", symmetry_action_xy=ACTION_XY, **extra)
    agent = sac.create(jax.random.key(0), space, ACTION_SPACE, cfg)
    batch = jax.tree.map(lambda x: x[0], random_batch(space, 1, 8))
    key = jax.random.key(3)

    def losses(a, b):
        _, metrics = sac.compute_losses(a, a.critic.params, a.actor.params, a.temperature.params,
                                        b, key)
        return {k: float(v) for k, v in metrics.items()}

    transformed = sac.apply_symmetry(cfg, jax.random.fold_in(key, sac.SYMMETRY_KEY_SALT), batch)
    assert losses(agent, batch) == pytest.approx(losses(plain, transformed), rel=1e-6)
    assert losses(agent, batch)["critic_loss"] != pytest.approx(losses(plain, batch)["critic_loss"],
                                                                rel=1e-4)


def test_encoder_downsample_null_pools_to_about_84_px_and_too_much_pooling_is_refused():
    auto = sac.SACConfig(**TINY, encoder_downsample=None)
    assert [sac.image_downsample(auto, (s, s, 3)) for s in (64, 84, 167, 168, 256)] == [1, 1, 1, 2, 3]
    assert sac.image_downsample(auto, (65,)) == 1  # vectors are never pooled
    assert sac.image_downsample(sac.SACConfig(**TINY, encoder_downsample=2), (256, 256, 3)) == 2
    space = gymnasium.spaces.Box(0, 255, (168, 168, 3), np.uint8)
    agent = sac.create(jax.random.key(0), space, ACTION_SPACE, auto)
    assert agent.networks.encoder.downsample == 2
    assert agent.critic.params["encoder"]["Dense_0"]["kernel"].shape[0] == 7 * 7 * 64  # 84 px
    with pytest.raises(sac.ConfigError, match=r"agent.encoder_downsample=3: pooling the 84x84 "
                                              r"images by 3 leaves 28 px"):
        sac.create(jax.random.key(0), gymnasium.spaces.Box(0, 255, (84, 84, 3), np.uint8),
                   ACTION_SPACE, sac.SACConfig(**TINY, encoder_downsample=3))
    with pytest.raises(sac.ConfigError, match="agent.encoder_downsample"):
        sac.SACConfig(encoder_downsample=0)


def test_augmentation_pad_null_shifts_by_4_px_per_84_px_of_side():
    assert [sac.shift_pad(sac.SACConfig(augmentation_pad=None), (s, s, 9)) for s in (84, 256, 42)] == [4, 12, 2]
    assert sac.shift_pad(sac.SACConfig(augmentation_pad=7), (256, 256, 9)) == 7
    space = gymnasium.spaces.Box(0, 255, (42, 42, 3), np.uint8)
    batch = jax.tree.map(lambda x: x[0], random_batch(space, 1, 8))  # one step's (B, ...) batch
    keys = jax.random.split(jax.random.key(3), 3)

    def augmented(pad):
        agent = sac.create(jax.random.key(0), space, ACTION_SPACE,
                           sac.SACConfig(**TINY, augmentation=True, augmentation_pad=pad))
        return np.asarray(sac.augment_batch(agent, *keys, batch).observations)

    np.testing.assert_array_equal(augmented(None), augmented(2))
    assert not np.array_equal(augmented(None), np.asarray(batch.observations))
    with pytest.raises(sac.ConfigError, match="agent.augmentation_pad"):
        sac.SACConfig(augmentation_pad=-1)
