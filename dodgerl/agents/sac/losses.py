"""SAC's losses, as in Haarnoja et al. 2018, "Soft Actor-Critic Algorithms and Applications"
(arXiv:1812.05905; equation numbers are that paper's), and their composition into one step.

Each loss is a small pure function on arrays, tested against hand-computed values in
tests/test_sac.py. ``compute_losses`` is one *simultaneous* step (as jaxrl_m): all three losses
at the parameters the step starts from, each depending only on its own parameters (the others
enter detached), so one gradient of their sum is each network's gradient of its own loss.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import optax

from dodgerl.agents.sac.fast import encode_step, sample_policy
from dodgerl.agents.sac.state import Batch
from dodgerl.agents.sac.transforms import augment_batch

if TYPE_CHECKING:
    from dodgerl.agents.sac.agent import SACAgent


def critic_target(
    rewards: jax.Array,
    terminated: jax.Array,
    next_target_q: jax.Array,
    next_log_probs: jax.Array,
    temperature: jax.Array,
    gamma: float | jax.Array,
) -> jax.Array:
    """Soft TD target y = r + gamma * (1 - terminated) * (min_i Q'_i(s', a') - alpha * log pi(a'|s')).

    The soft Bellman backup (eqs. 2-3, sampled as in eq. 6) with a' ~ pi(.|s'), over the min of
    the target critics (Section 6's two Q-functions). next_target_q is (n_critics, B); everything
    else is (B,) or scalar (``gamma`` may be a (B,) array of per-transition discounts, e.g.
    gamma**m for m-step returns). Truncated transitions arrive with terminated = 0: they bootstrap.
    """
    assert next_target_q.ndim == 2 and next_target_q.shape[1:] == rewards.shape, (
        next_target_q.shape, rewards.shape)
    assert terminated.shape == rewards.shape == next_log_probs.shape
    soft_value = jnp.min(next_target_q, axis=0) - temperature * next_log_probs  # V(s'), eq. 3
    return jax.lax.stop_gradient(rewards + gamma * (1.0 - terminated) * soft_value)


def critic_loss(q: jax.Array, target: jax.Array) -> jax.Array:
    """J_Q (eq. 5): sum over critics of the batch-mean of 0.5 * (Q_i(s, a) - y)^2; q is (n_critics, B)."""
    assert q.ndim == 2 and q.shape[1:] == target.shape, (q.shape, target.shape)
    return 0.5 * jnp.sum(jnp.mean(jnp.square(q - target[None]), axis=1))


def actor_loss(log_probs: jax.Array, q: jax.Array, temperature: jax.Array) -> jax.Array:
    """J_pi (eq. 7, reparameterised as eq. 9): batch-mean of alpha * log pi(a|s) - min_i Q_i(s, a),
    a = f(eps; s) ~ pi."""
    assert q.ndim == 2 and q.shape[1:] == log_probs.shape, (q.shape, log_probs.shape)
    return jnp.mean(temperature * log_probs - jnp.min(q, axis=0))


def temperature_loss(
    log_temperature: jax.Array, log_probs: jax.Array, target_entropy: float
) -> jax.Array:
    """J(alpha) (eq. 18), learned in log space (SB3's form): -log(alpha) * mean(log pi + H_target).
    alpha grows while the policy's entropy -E[log pi] is below the target, shrinks above it."""
    return -log_temperature * jnp.mean(jax.lax.stop_gradient(log_probs) + target_entropy)


def polyak_update(params: Any, target_params: Any, tau: float) -> Any:
    """Target critic: theta' <- tau * theta + (1 - tau) * theta', leaf by leaf (Algorithm 1)."""
    return optax.incremental_update(params, target_params, step_size=tau)


def compute_losses(
    agent: SACAgent,
    critic_params: Any,
    actor_params: Any,
    temperature_params: Any,
    batch: Batch,
    key: jax.Array,
    precast: dict[str, Any] | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The step's total loss (critic + actor + temperature) and metrics, for a batch without K
    axis. ``precast``: ``fast.precast_encoders(agent)`` for these parameters, or None."""
    sg = jax.lax.stop_gradient
    critic_head = agent.networks.critic_head
    k_shift, k_next_shift, k_next_action, k_action = jax.random.split(key, 4)
    batch = augment_batch(agent, key, k_shift, k_next_shift, batch)
    log_temperature = temperature_params["log_temperature"]
    temperature = sg(jnp.exp(log_temperature))
    features = encode_step(agent, critic_params, actor_params, batch.observations,
                           batch.next_observations, precast)
    actions, log_probs, next_actions, next_log_probs = sample_policy(
        agent, actor_params["head"], features, k_action, k_next_action)

    # y: the target critic at (s', a'); no gradient flows here.
    next_target_q = critic_head.apply(
        {"params": agent.critic.target_params["head"]}, features.next_target, next_actions)
    discounts = agent.config.gamma if batch.discounts is None else batch.discounts
    target = critic_target(batch.rewards, batch.terminated, next_target_q, next_log_probs,
                           temperature, discounts)
    # J_Q (eq. 5): gradients into the critic heads and the critic encoder.
    q = critic_head.apply({"params": critic_params["head"]}, features.critic, batch.actions)
    loss_critic = critic_loss(q, target)
    # J_pi (eq. 7): gradients into the actor (head, and its own encoder with separate sharing)
    # through the frozen critic.
    q_policy = critic_head.apply({"params": sg(critic_params["head"])}, sg(features.critic),
                                 actions)
    loss_actor = actor_loss(log_probs, q_policy, temperature)
    # J(alpha) (eq. 18): gradient into log(alpha) only.
    loss_temperature = temperature_loss(log_temperature, log_probs, agent.target_entropy)

    metrics = {
        "critic_loss": loss_critic,
        "actor_loss": loss_actor,
        "temperature_loss": loss_temperature,
        "temperature": temperature,
        "entropy": -jnp.mean(log_probs),
        "q_mean": jnp.mean(q),
        "target_q_mean": jnp.mean(target),
        "q_policy_mean": jnp.mean(q_policy),
    }
    return loss_critic + loss_actor + loss_temperature, metrics
