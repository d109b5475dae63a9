"""SAC's gradient steps: one step (``sac_step``), K of them in one compiled call (``lax.scan``
over a leading K axis), and the checks on a batch before it enters that call."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from dodgerl.agents.sac.fast import precast_encoders, resolve_impl
from dodgerl.agents.sac.losses import compute_losses, polyak_update
from dodgerl.agents.sac.state import Batch

if TYPE_CHECKING:
    from dodgerl.agents.sac.agent import SACAgent


def sac_step(agent: SACAgent, batch: Batch, key: jax.Array,
             precast: dict[str, Any] | None = None) -> tuple[SACAgent, dict[str, jax.Array]]:
    """One simultaneous gradient step on a batch without K axis, then the Polyak target update.
    ``precast``: ``precast_encoders(agent)`` carried from the previous step, or None (same result)."""
    grad_fn = jax.grad(compute_losses, argnums=(1, 2, 3), has_aux=True)
    (critic_grads, actor_grads, temperature_grads), metrics = grad_fn(
        agent, agent.critic.params, agent.actor.params, agent.temperature.params, batch, key,
        precast,
    )
    critic = agent.critic.apply_gradients(grads=critic_grads)
    critic = critic.replace(
        target_params=polyak_update(critic.params, critic.target_params, agent.config.tau)
    )
    actor = agent.actor.apply_gradients(grads=actor_grads)
    temperature = agent.temperature.apply_gradients(grads=temperature_grads)
    return agent.replace(critic=critic, actor=actor, temperature=temperature), metrics


def _as_float(batch: Batch) -> Batch:
    return batch.replace(
        actions=batch.actions.astype(jnp.float32),
        rewards=batch.rewards.astype(jnp.float32),
        terminated=batch.terminated.astype(jnp.float32),
        discounts=None if batch.discounts is None else batch.discounts.astype(jnp.float32),
    )


def _scan_steps(agent: SACAgent, xs: Any, num_steps: int, key: jax.Array,
                make_batch: Callable[[Any], Batch]) -> tuple[SACAgent, dict[str, jax.Array]]:
    # Step i draws its randomness from split(key, K)[i]; a K = 1 call uses its key as is, so that
    # K calls with keys split(key, K)[i] replay exactly one call with K stacked batches.
    keys = key[None] if num_steps == 1 else jax.random.split(key, num_steps)

    def body(carry: tuple[SACAgent, Any], inputs: tuple[Any, jax.Array]):
        agent, precast = carry
        x, step_key = inputs
        agent, metrics = sac_step(agent, _as_float(make_batch(x)), step_key, precast)
        # The next step's bf16 copies, converted from the parameters just written: XLA fuses
        # the conversion into the kernels that write them (Adam, Polyak).
        return (agent, None if precast is None else precast_encoders(agent)), metrics

    unroll = resolve_impl(agent.config.impl, agent.observation_shape).scan_unroll
    assert unroll is not None
    (agent, _), metrics = jax.lax.scan(body, (agent, precast_encoders(agent)), (xs, keys),
                                       unroll=max(1, min(unroll, num_steps)))
    return agent, jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics)


def _update(agent: SACAgent, batch: Batch, key: jax.Array) -> tuple[SACAgent, dict[str, jax.Array]]:
    return _scan_steps(agent, batch, batch.rewards.shape[0], key, lambda b: b)


_update_jit = jax.jit(_update, donate_argnums=0)
"""The compiled update (``SACAgent.update``); ``_update_jit._cache_size()`` counts compilations."""


def _update_from(agent: SACAgent, store: Any, indices: Any, key: jax.Array,
                 gather: Callable[[Any, Any], Mapping[str, jax.Array]]
                 ) -> tuple[SACAgent, dict[str, jax.Array]]:
    num_steps = jax.tree.leaves(indices)[0].shape[0]
    return _scan_steps(agent, indices, num_steps, key, lambda idx: Batch(**gather(store, idx)))


_update_from_jit = jax.jit(_update_from, donate_argnums=0, static_argnums=4)
"""The compiled update over batches gathered on the device (``SACAgent.update_from``)."""


def check_batch(agent: SACAgent, batch: Batch) -> None:
    """Shape checks that would otherwise broadcast silently inside the compiled update."""
    if not isinstance(batch, Batch):
        raise ValueError(f"update expects a sac.Batch, got {type(batch).__name__}")
    rewards_shape = tuple(np.shape(batch.rewards))
    if len(rewards_shape) != 2:
        raise ValueError(
            f"batch.rewards must be (K, B) with a leading K axis, got shape {rewards_shape}"
        )
    expected = {
        "observations": (*rewards_shape, *agent.observation_shape),
        "next_observations": (*rewards_shape, *agent.observation_shape),
        "actions": (*rewards_shape, agent.action_dim),
        "terminated": rewards_shape,
    }
    if batch.discounts is not None:
        expected["discounts"] = rewards_shape
    for name, shape in expected.items():
        got = tuple(np.shape(getattr(batch, name)))
        if got != shape:
            raise ValueError(f"batch.{name} has shape {got}, expected {shape} (K, B, ...)")
    if agent.networks.is_image:
        for name in ("observations", "next_observations"):
            dtype = getattr(batch, name).dtype
            if dtype != np.uint8:
                raise ValueError(f"batch.{name} must be uint8 images, got dtype {dtype}")
