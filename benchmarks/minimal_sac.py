"""The peer of the update benchmark: a minimal, textbook jitted SAC in JAX/Flax/Optax.

Issue 3's speed targets are anchored on "a minimal jitted JAX SAC" measured on the same machine
with the same shapes. Anchors taken on another machine do not transfer (two 2-core CI-class
boxes differ by 2x: with and without AVX-512), so this file is that peer, measured in the same
run as ``dodgerl.agents.sac`` by ``benchmarks/update_throughput.py --peer``. It is deliberately
plain, in the style of CleanRL / jaxrl_m: twin Q MLPs (one ``nn.vmap`` ensemble), a
tanh-Gaussian actor, learned log-alpha; the critic step, then the actor and temperature step on
the updated critic, then Polyak; NatureCNN (plain ``nn.Conv`` strides) for images with the
critic's encoder shared and the actor reading it detached. K steps per call by ``lax.scan``.
It is not used by the library and has no options beyond the shapes.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training.train_state import TrainState


class Encoder(nn.Module):
    """Identity for vectors; Nature-DQN CNN (uint8 scaled on the device) for images."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        if x.ndim == 2:
            return x.astype(jnp.float32)
        x = x.astype(self.dtype) / 255.0
        for feat, k, s in ((32, 8, 4), (64, 4, 2), (64, 3, 1)):
            x = nn.relu(nn.Conv(feat, (k, k), (s, s), padding="VALID", dtype=self.dtype)(x))
        x = x.reshape(x.shape[0], -1)
        return nn.relu(nn.Dense(512, dtype=self.dtype)(x)).astype(jnp.float32)


class QNet(nn.Module):
    @nn.compact
    def __call__(self, features, actions):
        x = jnp.concatenate([features, actions], -1)
        x = nn.relu(nn.Dense(256)(x))
        x = nn.relu(nn.Dense(256)(x))
        return nn.Dense(1)(x)[..., 0]


class Critic(nn.Module):
    """Encoder + two Q heads; ``heads`` alone for the actor loss on (detached) features."""

    dtype: Any = jnp.float32

    def setup(self):
        self.encoder = Encoder(self.dtype)
        self.q = nn.vmap(QNet, variable_axes={"params": 0}, split_rngs={"params": True},
                         in_axes=None, out_axes=0, axis_size=2)()

    def __call__(self, obs, actions):
        return self.q(self.encoder(obs), actions)

    def encode(self, obs):
        return self.encoder(obs)

    def heads(self, features, actions):
        return self.q(features, actions)


class Actor(nn.Module):
    action_dim: int

    @nn.compact
    def __call__(self, features):
        x = nn.relu(nn.Dense(256)(features))
        x = nn.relu(nn.Dense(256)(x))
        mean = nn.Dense(self.action_dim)(x)
        log_std = jnp.clip(nn.Dense(self.action_dim)(x), -5.0, 2.0)
        return mean, log_std


def sample(key, mean, log_std):
    std = jnp.exp(log_std)
    u = mean + std * jax.random.normal(key, mean.shape)
    action = jnp.tanh(u)
    log_prob = (-0.5 * ((u - mean) / std) ** 2 - log_std - 0.5 * jnp.log(2 * jnp.pi)).sum(-1)
    log_prob -= jnp.log(1.0 - action**2 + 1e-6).sum(-1)
    return action, log_prob


class State(TrainState):
    target_params: Any = None


def create(key, obs_shape, action_dim, dtype=jnp.float32, lr=3e-4):
    """(critic, actor, alpha) TrainStates and the static modules."""
    critic_net, actor_net = Critic(dtype), Actor(action_dim)
    obs = jnp.zeros((1, *obs_shape), jnp.uint8 if len(obs_shape) == 3 else jnp.float32)
    k1, k2 = jax.random.split(key)
    critic_params = critic_net.init(k1, obs, jnp.zeros((1, action_dim)))["params"]
    features = critic_net.apply({"params": critic_params}, obs, method=Critic.encode)
    actor_params = actor_net.init(k2, features)["params"]
    critic = State.create(apply_fn=critic_net.apply, params=critic_params, tx=optax.adam(lr),
                          target_params=critic_params)
    actor = TrainState.create(apply_fn=actor_net.apply, params=actor_params, tx=optax.adam(lr))
    alpha = TrainState.create(apply_fn=None, params={"log_alpha": jnp.zeros(())},
                              tx=optax.adam(lr))
    return critic, actor, alpha


def step(states, batch, key, gamma=0.99, tau=0.005):
    """One SAC gradient step: critic, then actor + temperature on the new critic, then Polyak."""
    critic, actor, alpha = states
    obs, actions, rewards, next_obs, terminated = batch
    k1, k2 = jax.random.split(key)
    target_entropy = -actions.shape[-1]
    enc = lambda params, o: critic.apply_fn({"params": params}, o, method=Critic.encode)  # noqa: E731

    next_features = enc(critic.params, next_obs)
    next_actions, next_log_probs = sample(k1, *actor.apply_fn({"params": actor.params},
                                                              next_features))
    next_q = critic.apply_fn({"params": critic.target_params}, next_obs, next_actions)
    temperature = jnp.exp(alpha.params["log_alpha"])
    target = rewards + gamma * (1.0 - terminated) * (next_q.min(0) - temperature * next_log_probs)

    def critic_loss(params):
        q = critic.apply_fn({"params": params}, obs, actions)
        return 0.5 * ((q - target) ** 2).mean(1).sum()

    loss, grads = jax.value_and_grad(critic_loss)(critic.params)
    critic = critic.apply_gradients(grads=grads)

    features = jax.lax.stop_gradient(enc(critic.params, obs))

    def actor_loss(params):
        new_actions, log_probs = sample(k2, *actor.apply_fn({"params": params}, features))
        q = critic.apply_fn({"params": critic.params}, features, new_actions, method=Critic.heads)
        return (temperature * log_probs - q.min(0)).mean(), log_probs

    grads, log_probs = jax.grad(actor_loss, has_aux=True)(actor.params)
    actor = actor.apply_gradients(grads=grads)
    alpha_grad = jax.grad(
        lambda a: -(a["log_alpha"] * (log_probs + target_entropy)).mean())(alpha.params)
    alpha = alpha.apply_gradients(grads=alpha_grad)
    critic = critic.replace(
        target_params=optax.incremental_update(critic.params, critic.target_params, tau))
    return (critic, actor, alpha), loss


@jax.jit
def update(states, batch, key):
    """K steps over a batch with a leading K axis, one compiled call."""
    keys = jax.random.split(key, batch[2].shape[0])
    states, losses = jax.lax.scan(lambda s, xk: step(s, xk[0], xk[1]), states, (batch, keys))
    return states, losses.mean()
