"""How one SAC step computes its encoder passes fast, apart from what it computes.

``encode_step`` is the one function the losses call: it returns the four feature sets a step
needs (critic features of obs, the actor's, the online and the target encoder's of next obs)
and hides the speed machinery of ``ImplOptions``: bf16 parameter copies carried through the
K-step scan (with a custom VJP so gradients reach the float32 parameters), one online-encoder
call over [obs; next obs] (``concat_online``) or the next-obs encoders stacked into one vmapped
call (``stack_next``). ``sample_policy`` runs the actor head once over obs and next obs. This
module also chooses the defaults left None: conv forms from the backend and image size, and the
scan unroll. Every choice gives the same numbers up to float rounding (tests/test_sac.py).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

from dodgerl.agents.sac.config import ImplOptions
from dodgerl.networks import precast_params, sample_tanh_gaussian

if TYPE_CHECKING:
    from dodgerl.agents.sac.agent import Networks, SACAgent

CONV_GEMM_MAX_SIDE = 128
"""``ImplOptions.conv_gemm=None`` computes the convs as GEMMs for images up to this side on
accelerators (faster at 84, slower at 256; the sides between are not measured), at every size
on the CPU backend."""


def resolve_impl(impl: ImplOptions, observation_shape: tuple[int, ...]) -> ImplOptions:
    """``impl`` with ``conv_gemm`` and ``scan_unroll`` chosen where None, from the backend
    (``jax.default_backend()``, read now) and the observation shape. Cached: every act and update
    call of an agent builds its networks through this."""
    return _resolve_impl(impl, tuple(observation_shape), jax.default_backend())


@functools.lru_cache(maxsize=None)
def _resolve_impl(impl: ImplOptions, observation_shape: tuple[int, ...], backend: str) -> ImplOptions:
    is_image = len(observation_shape) == 3
    changes: dict[str, Any] = {}
    if impl.conv_gemm is None:
        changes["conv_gemm"] = is_image and (backend == "cpu"
                                             or max(observation_shape[:2]) <= CONV_GEMM_MAX_SIDE)
    if impl.scan_unroll is None:
        changes["scan_unroll"] = 8 if is_image else 1
    return dataclasses.replace(impl, **changes) if changes else impl


def encode(nets: Networks, encoder_params: Any, observations: jax.Array) -> jax.Array:
    return nets.encoder.apply({"params": encoder_params}, observations)


# ---------------------------------------------------------------- bf16 copies of the encoders


def precast_encoders(agent: SACAgent) -> dict[str, Any] | None:
    """Each encoder's parameters with the leaves it computes in bf16 already converted
    (``ImplOptions.precast_encoder``), keyed "critic", "target" (and "actor" with separate
    sharing); None when nothing would be converted (vectors, float32 encoders, option off)."""
    nets, config = agent.networks, agent.config
    if not (config.impl.precast_encoder and nets.is_image and config.bf16_encoder):
        return None
    cast = functools.partial(precast_params, nets.encoder)
    out = {"critic": cast(agent.critic.params["encoder"]),
           "target": cast(agent.critic.target_params["encoder"])}
    if config.encoder_sharing == "separate":
        out["actor"] = cast(agent.actor.params["encoder"])
    return out


@jax.custom_vjp
def _with_precast(params: Any, precast: Any) -> Any:
    """``precast`` (= ``precast_params(encoder, params)``) in the forward pass, differentiated as
    the conversions it replaces: the cotangent goes to ``params``, converted back to their dtype."""
    return precast


def _with_precast_fwd(params: Any, precast: Any) -> tuple[Any, Any]:
    return precast, params


def _with_precast_bwd(params: Any, cotangent: Any) -> tuple[Any, None]:
    return jax.tree.map(lambda p, g: g.astype(p.dtype), params, cotangent), None


_with_precast.defvjp(_with_precast_fwd, _with_precast_bwd)


# ---------------------------------------------------------------- the step's encoder passes


@dataclasses.dataclass(frozen=True)
class StepFeatures:
    """The encoder outputs of one step, for a batch of B transitions."""

    critic: jax.Array
    """Critic encoder of obs: the critic loss's input, its gradient reaches that encoder."""
    actor: jax.Array
    """Actor's view of obs: the critic's features detached (critic sharing), its own encoder's
    (separate) or the critic's conv output detached (convs; the actor head's trunk reads it)."""
    next: jax.Array
    """The actor's view of next obs (online encoder), detached: what the policy samples a' from."""
    next_target: jax.Array
    """Target encoder of next obs: the target critic's input."""


def encode_step(agent: SACAgent, critic_params: Any, actor_params: Any,
                observations: jax.Array, next_observations: jax.Array,
                precast: dict[str, Any] | None = None) -> StepFeatures:
    """The features of obs and next obs that one SAC step needs, computed as ``ImplOptions``
    says. ``precast``: ``precast_encoders(agent)`` for these parameters, or None."""
    nets, config, impl = agent.networks, agent.config, agent.config.impl
    sg = jax.lax.stop_gradient
    batch_size = observations.shape[0]
    critic_encoder = critic_params["encoder"]
    target_encoder = agent.critic.target_params["encoder"]
    actor_encoder = actor_params.get("encoder")
    if precast is not None:
        critic_encoder = _with_precast(critic_encoder, precast["critic"])
        target_encoder = precast["target"]
        if actor_encoder is not None:
            actor_encoder = _with_precast(actor_encoder, precast["actor"])
    if config.encoder_sharing == "convs":
        return _encode_step_convs(agent, critic_encoder, target_encoder, observations,
                                  next_observations)
    # With critic sharing the actor reads the critic's encoder (detached, below).
    online_encoder = critic_encoder if config.encoder_sharing == "critic" else actor_encoder
    # stack_next (exclusive with concat_online) needs parameters to stack: the identity vector
    # encoder has none.
    stack_next = (impl.stack_next and not impl.concat_online
                  and bool(jax.tree.leaves(online_encoder)))
    if impl.concat_online:
        # The next-obs half is detached, so its cotangent is exactly zero and the gradients
        # equal the two-call form below.
        both = encode(nets, online_encoder,
                      jnp.concatenate([observations, next_observations], axis=0))
        online_features, next_features = both[:batch_size], sg(both[batch_size:])
    else:
        online_features = encode(nets, online_encoder, observations)
        if not stack_next:
            next_features = encode(nets, sg(online_encoder), next_observations)
    if stack_next:
        stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), sg(online_encoder),
                               target_encoder)
        next_features, next_target_features = jax.vmap(
            lambda p: encode(nets, p, next_observations))(stacked)
    else:
        next_target_features = encode(nets, target_encoder, next_observations)
    if config.encoder_sharing == "critic":
        critic_features, actor_features = online_features, sg(online_features)
    else:
        critic_features = encode(nets, critic_encoder, observations)
        actor_features = online_features
    return StepFeatures(critic_features, actor_features, next_features, next_target_features)


def _encode_step_convs(agent: SACAgent, critic_encoder: Any, target_encoder: Any,
                       observations: jax.Array, next_observations: jax.Array) -> StepFeatures:
    """``encode_step`` with ``convs`` sharing: one critic-encoder call gives the critic's features
    of obs and the conv output the actor reads (detached); the actor's view of next obs is the
    conv output alone. ``concat_online`` makes the two online calls one over [obs; next obs]."""
    nets, sg = agent.networks, jax.lax.stop_gradient
    with_torso = nets.encoder.clone(returns="both")
    if agent.config.impl.concat_online:
        batch_size = observations.shape[0]
        features, torso = with_torso.apply(
            {"params": critic_encoder}, jnp.concatenate([observations, next_observations], axis=0))
        critic_features, actor_torso = features[:batch_size], torso[:batch_size]
        next_torso = torso[batch_size:]
    else:
        critic_features, actor_torso = with_torso.apply({"params": critic_encoder}, observations)
        next_torso = nets.actor_input.apply({"params": sg(critic_encoder)}, next_observations)
    next_target_features = encode(nets, target_encoder, next_observations)
    return StepFeatures(critic_features, sg(actor_torso), sg(next_torso), next_target_features)


def sample_policy(agent: SACAgent, actor_head_params: Any, features: StepFeatures,
                  key: jax.Array, next_key: jax.Array
                  ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """(a, log pi(a|s), a', log pi(a'|s')): a ~ pi(.|s) reparameterised, a' ~ pi(.|s') detached.
    The actor head runs once over [obs features; next obs features]."""
    sg = jax.lax.stop_gradient
    batch_size = features.actor.shape[0]
    mean, log_std = agent.networks.actor_head.apply(
        {"params": actor_head_params}, jnp.concatenate([features.actor, features.next], axis=0))
    next_actions, next_log_probs = sample_tanh_gaussian(
        next_key, sg(mean[batch_size:]), sg(log_std[batch_size:]))
    actions, log_probs = sample_tanh_gaussian(key, mean[:batch_size], log_std[:batch_size])
    return actions, log_probs, next_actions, next_log_probs
