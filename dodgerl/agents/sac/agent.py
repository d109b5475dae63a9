"""The SAC agent as one pytree (``SACAgent``), its acting part (``Policy``), its networks, and
``create``, which builds a fresh agent for a pair of gymnasium spaces.

The whole agent is one ``flax.struct.PyTreeNode`` (critic TrainState with ``target_params``,
actor TrainState, log-temperature TrainState, plus static config and shapes), so one Orbax call
saves or restores it. ``update`` runs K gradient steps in one compiled call (``update.py``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from flax.training.train_state import TrainState

from dodgerl.agents.sac.config import ImplOptions, SACConfig, image_downsample
from dodgerl.agents.sac.fast import resolve_impl
from dodgerl.agents.sac.state import Batch, CriticTrainState
from dodgerl.agents.sac.update import _update_from_jit, _update_jit, check_batch
from dodgerl.networks import (
    CriticEnsemble,
    MLPEncoder,
    NatureCNN,
    SetEncoder,
    TanhGaussianActorHead,
    nature_cnn_min_size,
    sample_tanh_gaussian,
)
from dodgerl.validation import ConfigError


@dataclasses.dataclass(frozen=True)
class Networks:
    """The Flax modules of one agent (built from static data; holds no parameters)."""

    encoder: nn.Module
    critic_head: CriticEnsemble
    actor_head: TanhGaussianActorHead
    is_image: bool
    actor_input: nn.Module
    """Observations -> the actor head's input, on the parameters of the encoder the actor reads:
    ``encoder`` itself, or with ``convs`` sharing the same CNN returning its conv output."""


def build_networks(
    config: SACConfig, observation_shape: tuple[int, ...], action_dim: int
) -> Networks:
    """Modules for these static settings (cached, so agents with equal settings share them).
    ``config.impl``'s None fields are chosen now, from the backend and the observation shape."""
    k = image_downsample(config, observation_shape)  # the convs' choices follow what they read
    cnn_input = (*(n // k for n in observation_shape[:2]), *observation_shape[2:])
    return _build_networks(config, resolve_impl(config.impl, cnn_input), observation_shape,
                           action_dim)


@functools.lru_cache(maxsize=None)
def _build_networks(config: SACConfig, impl: ImplOptions, observation_shape: tuple[int, ...],
                    action_dim: int) -> Networks:
    is_image = len(observation_shape) == 3
    convs = is_image and config.encoder_sharing == "convs"  # vectors: a ConfigError in create
    encoder: nn.Module
    if is_image:
        dtype = jnp.bfloat16 if config.bf16_encoder else jnp.float32
        encoder = NatureCNN(
            features=config.encoder_features,
            dtype=dtype,
            dense_dtype=dtype if impl.bf16_dense else jnp.float32,
            space_to_depth=impl.conv1_space_to_depth,
            output=config.encoder_output,
            conv_gemm=impl.conv_gemm,
            downsample=image_downsample(config, observation_shape),
        )
    elif config.vector_encoder == "set":
        assert config.set_layout is not None  # create() says so first
        encoder = SetEncoder(*config.set_layout, features=config.set_encoder_arch)
    else:
        encoder = MLPEncoder(config.vector_encoder_arch)
    return Networks(
        encoder=encoder,
        critic_head=CriticEnsemble(config.net_arch, config.n_critics, config.critic_layer_norm),
        actor_head=TanhGaussianActorHead(
            config.net_arch, action_dim, config.log_std_min, config.log_std_max,
            trunk_features=config.encoder_features if convs else 0,
            trunk_output=config.encoder_output,
        ),
        is_image=is_image,
        actor_input=encoder.clone(returns="torso") if convs else encoder,
    )


@functools.lru_cache(maxsize=None)
def _adam(learning_rate: float) -> optax.GradientTransformation:
    # Cached so that agents built with equal configs carry the *same* optimiser object in their
    # static treedef: a restored agent then hits the jit cache instead of recompiling.
    return optax.adam(learning_rate)


class Policy(struct.PyTreeNode):
    """A SAC policy without the rest of the agent: actor head and encoder parameters plus the
    static config and shapes. ``SACAgent.policy()`` makes one; it pickles once its arrays are on
    the host (``jax.device_get``), which is how evaluation processes receive it."""

    head: Any
    encoder: Any
    config: SACConfig = struct.field(pytree_node=False)
    observation_shape: tuple[int, ...] = struct.field(pytree_node=False)
    action_dim: int = struct.field(pytree_node=False)

    def act(self, observations: Any, key: jax.Array | None = None, deterministic: bool = False
            ) -> jax.Array:
        """As ``SACAgent.act``: (obs_shape) -> (d,) or (B, *obs_shape) -> (B, d), in [-1, 1]."""
        shape = tuple(np.shape(observations))
        single = shape == self.observation_shape
        if not single and shape[1:] != self.observation_shape:
            raise ValueError(
                f"act: observations of shape {shape} match neither "
                f"{self.observation_shape} nor (B, *{self.observation_shape})"
            )
        deterministic = bool(deterministic)
        if key is None:
            if not deterministic:
                raise ValueError("act: a key is required unless deterministic=True")
            key = _unused_key()
        return _act_jit(self.config, self.observation_shape, self.action_dim, self.head,
                        self.encoder, observations, key, deterministic)


class SACAgent(struct.PyTreeNode):
    """The whole SAC agent as one pytree: three TrainStates plus static config and shapes.

    critic.params = {"encoder": ..., "head": ...} (the encoder, or with ``convs`` its convolutions,
    is shared with the actor unless ``encoder_sharing == "separate"``); critic.target_params has
    the same structure. actor.params = {"head": ...} with critic or convs sharing (with convs the
    head holds the actor's own trunk), {"encoder": ..., "head": ...} with separate.
    temperature.params = {"log_temperature": scalar}.
    """

    critic: CriticTrainState
    actor: TrainState
    temperature: TrainState
    config: SACConfig = struct.field(pytree_node=False)
    observation_shape: tuple[int, ...] = struct.field(pytree_node=False)
    action_dim: int = struct.field(pytree_node=False)

    @property
    def networks(self) -> Networks:
        return build_networks(self.config, self.observation_shape, self.action_dim)

    @property
    def target_entropy(self) -> float:
        if self.config.target_entropy is None:
            return -float(self.action_dim)
        return float(self.config.target_entropy)

    def policy(self) -> Policy:
        """The acting part alone (actor head and encoder parameters): what ``act`` uses, small
        enough to copy to another process (``jax.device_get`` it first) or device."""
        if self.config.encoder_sharing == "separate":
            encoder_params = self.actor.params["encoder"]
        else:
            encoder_params = self.critic.params["encoder"]
        return Policy(self.actor.params["head"], encoder_params, self.config, self.observation_shape,
                      self.action_dim)

    def act(self, observations: Any, key: jax.Array | None = None, deterministic: bool = False
            ) -> jax.Array:
        """Actions in [-1, 1]^d for one observation (obs_shape) -> (d,) or a batch -> (B, d).

        Cheap enough to call every env step: it calls a compiled function of only the actor head's
        and the encoder's parameters (``policy()``), the observations (numpy is fine: they travel
        inside the call) and the key, so the optimiser states never cross the jit boundary. Call
        it directly; wrapping it in your own ``jax.jit`` of the whole agent brings that cost back.
        A fixed input shape compiles once. ``deterministic`` returns tanh(mean); ``key`` may be
        None only then.
        """
        return self.policy().act(observations, key, deterministic)

    def update(self, batch: Batch, key: jax.Array) -> tuple[SACAgent, dict[str, jax.Array]]:
        """K gradient steps, one per slice of the batch's leading K axis, in one compiled call.

        Step i uses ``jax.random.split(key, K)[i]`` as its key (K = 1: ``key`` itself), so K
        single-step calls with those keys reproduce one K-step call. Returns the new agent and
        metrics averaged over the K steps. The agent's buffers are donated: use the returned
        agent, not ``self``.
        """
        check_batch(self, batch)
        return _update_jit(self, batch, key)

    def update_from(self, store: Any, indices: Any, key: jax.Array,
                    gather: Callable[[Any, Any], Mapping[str, jax.Array]]
                    ) -> tuple[SACAgent, dict[str, jax.Array]]:
        """Like ``update``, but step i trains on ``gather(store, indices_i)``, built on the device
        inside the compiled call (``indices_i``: slice i of every leaf's leading K axis).

        For data that already lives on the accelerator, e.g. a replay mirror
        (``dodgerl.replay.DeviceMirror``, ``dodgerl.replay.gather_batch``): only the indices
        cross to the device and no (K, B, ...) batch of frames is ever materialised. ``store``
        is read, not donated. ``gather`` must be a module-level function (it is a static
        argument of the compiled call, and a new function object means a new compilation).
        Same keys, same batches: same result as ``update``.
        """
        return _update_from_jit(self, store, indices, key, gather)


# ---------------------------------------------------------------- creation


def _check_spaces(observation_space: Any, action_space: Any) -> tuple[tuple[int, ...], int]:
    if not isinstance(action_space, gymnasium.spaces.Box) or len(action_space.shape) != 1:
        raise ValueError(
            f"action space must be a 1-D gymnasium Box, got {action_space!r}"
        )
    if not (np.all(action_space.low == -1.0) and np.all(action_space.high == 1.0)):
        raise ValueError(
            f"action space must be [-1, 1]^d, got low={action_space.low} high={action_space.high}; "
            "wrap the env in gymnasium.wrappers.RescaleAction(env, -1.0, 1.0)"
        )
    if not isinstance(observation_space, gymnasium.spaces.Box):
        raise ValueError(
            f"observation space must be a gymnasium Box (float vector or uint8 HxWxC image), "
            f"got {type(observation_space).__name__}: {observation_space!r}"
        )
    shape, dtype = tuple(observation_space.shape), observation_space.dtype
    if len(shape) == 1 and np.issubdtype(dtype, np.floating):
        return shape, int(action_space.shape[0])
    if len(shape) == 3 and dtype == np.uint8:
        minimum = nature_cnn_min_size()
        if shape[0] < minimum or shape[1] < minimum:
            raise ValueError(
                f"image observation space {shape} is too small for NatureCNN: height and width "
                f"must be >= {minimum}"
            )
        return shape, int(action_space.shape[0])
    raise ValueError(
        f"cannot encode observation space Box(shape={shape}, dtype={dtype}): expected a 1-D "
        "floating vector (MLP encoder) or a 3-D uint8 (H, W, C) image (NatureCNN)"
    )


def _not_given(name: str, why: str) -> ConfigError:
    return ConfigError(
        f"agent.{name}: not given, and {why} needs it. An env with this structure publishes it "
        "(dodge: env.unwrapped.observation_structure): pass it with "
        f"sac.with_observation_structure(config, structure), or set agent.{name}")


def _check_config_fits(config: SACConfig, observation_shape: tuple[int, ...],
                       action_dim: int) -> None:
    """ConfigErrors for what the config leaves unset or gets wrong about these shapes."""
    is_vector = len(observation_shape) == 1
    if is_vector and config.encoder_sharing == "convs":
        raise ConfigError(
            f"agent.encoder_sharing='convs' shares a CNN's convolutions: it needs image "
            f"observations, the observation is a {observation_shape[0]}-dim vector (use 'critic' "
            "or 'separate')")
    k = image_downsample(config, observation_shape)
    if not is_vector and min(observation_shape[:2]) // k < nature_cnn_min_size():
        raise ConfigError(
            f"agent.encoder_downsample={config.encoder_downsample}: pooling the "
            f"{observation_shape[0]}x{observation_shape[1]} images by {k} leaves "
            f"{min(observation_shape[:2]) // k} px, below NatureCNN's {nature_cnn_min_size()}"
        )
    if is_vector and config.vector_encoder == "set":
        if config.set_layout is None:
            raise _not_given("set_layout", "vector_encoder 'set'")
        (dims,), (g, m) = observation_shape, config.set_layout
        if dims <= g or (dims - g) % m:
            raise ConfigError(
                f"agent.set_layout={list(config.set_layout)}: a {dims}-dim observation is not "
                f"{g} global features followed by items of {m} features"
            )
    if config.symmetry == "none":
        return
    if not is_vector and observation_shape[0] != observation_shape[1]:
        raise ConfigError(
            f"agent.symmetry={config.symmetry!r}: the images must be square (the "
            f"observation is {observation_shape})"
        )
    checks = [("symmetry_action_xy", action_dim, "action")]
    if is_vector:
        checks.insert(0, ("symmetry_obs_xy", observation_shape[0], "observation"))
    for name, size, what in checks:
        xy = getattr(config, name)
        if xy is None:
            raise _not_given(name, f"symmetry {config.symmetry!r}")
        if xy and max(xy) + 1 >= size:
            raise ConfigError(
                f"agent.{name}={list(xy)}: the pair at index {max(xy)} needs {max(xy) + 2} "
                f"features, the {what} has {size}"
            )


def create(
    key: jax.Array,
    observation_space: gymnasium.spaces.Space,
    action_space: gymnasium.spaces.Space,
    config: SACConfig | None = None,
) -> SACAgent:
    """A freshly initialised agent for these gymnasium spaces.

    Vector observations (1-D float Box) get the MLP encoder (or the set encoder,
    ``vector_encoder: set``); uint8 (H, W, C) images (C = 3*k for k stacked frames) get
    NatureCNN. The action space must be Box([-1, 1]^d). What the config leaves None about the
    observation's structure (``set_layout``, the symmetry pairs) must be filled first where it
    is used (``with_observation_structure``); a ConfigError names the key otherwise.
    """
    config = SACConfig() if config is None else config
    if not isinstance(config, SACConfig):
        raise ValueError(f"config must be a SACConfig, got {type(config).__name__}")
    observation_shape, action_dim = _check_spaces(observation_space, action_space)
    _check_config_fits(config, observation_shape, action_dim)
    critic, actor, temperature = _initial_states(key, config, observation_shape, action_dim)
    agent = SACAgent(critic=critic, actor=actor, temperature=temperature, config=config,
                     observation_shape=observation_shape, action_dim=action_dim)
    # Commit every leaf to the default device. Freshly initialised arrays are uncommitted, the
    # update's outputs are committed: without this the second update call compiles the whole
    # program again for the new input shardings.
    return jax.device_put(agent, jax.devices()[0])


def _initial_states(key: jax.Array, config: SACConfig, observation_shape: tuple[int, ...],
                    action_dim: int) -> tuple[CriticTrainState, TrainState, TrainState]:
    nets = build_networks(config, observation_shape, action_dim)
    obs_dtype = jnp.uint8 if nets.is_image else jnp.float32
    dummy_obs = jnp.zeros((1, *observation_shape), obs_dtype)
    dummy_action = jnp.zeros((1, action_dim), jnp.float32)

    k_enc_critic, k_critic, k_enc_actor, k_actor = jax.random.split(key, 4)
    critic_encoder = nets.encoder.init(k_enc_critic, dummy_obs).get("params", {})
    features = nets.encoder.apply({"params": critic_encoder}, dummy_obs)
    critic_params = {
        "encoder": critic_encoder,
        "head": nets.critic_head.init(k_critic, features, dummy_action)["params"],
    }
    actor_features = nets.actor_input.apply({"params": critic_encoder}, dummy_obs)
    actor_params = {"head": nets.actor_head.init(k_actor, actor_features)["params"]}
    if config.encoder_sharing == "separate":
        actor_params["encoder"] = nets.encoder.init(k_enc_actor, dummy_obs).get("params", {})

    critic = CriticTrainState.create(
        apply_fn=None,
        params=critic_params,
        tx=_adam(config.critic_lr),
        target_params=jax.tree.map(jnp.copy, critic_params),
    )
    actor = TrainState.create(apply_fn=None, params=actor_params, tx=_adam(config.actor_lr))
    temperature = TrainState.create(
        apply_fn=None,
        params={"log_temperature": jnp.asarray(np.log(config.initial_temperature), jnp.float32)},
        tx=_adam(config.temperature_lr),
    )
    # TrainState.create leaves step a Python int (weakly typed once traced); a strong int32 keeps
    # the first and later calls of the jitted update on one signature (no recompilation).
    # Each gets its own buffer: update donates the agent, and a buffer cannot be donated twice.
    critic, actor, temperature = (
        s.replace(step=jnp.zeros((), jnp.int32)) for s in (critic, actor, temperature)
    )
    return critic, actor, temperature


# ---------------------------------------------------------------- acting


def _act(config: SACConfig, observation_shape: tuple[int, ...], action_dim: int,
         head_params: Any, encoder_params: Any, observations: jax.Array, key: jax.Array,
         deterministic: bool) -> jax.Array:
    nets = build_networks(config, observation_shape, action_dim)
    single = observations.ndim == len(observation_shape)
    if single:
        observations = observations[None]
    features = nets.actor_input.apply({"params": encoder_params}, observations)
    mean, log_std = nets.actor_head.apply({"params": head_params}, features)
    if deterministic:
        actions = jnp.tanh(mean)
    else:
        actions, _ = sample_tanh_gaussian(key, mean, log_std)
    return actions[0] if single else actions


@functools.lru_cache(maxsize=1)
def _unused_key() -> jax.Array:
    return jax.random.key(0)


_act_jit = jax.jit(_act, static_argnums=(0, 1, 2, 7))
"""The compiled acting path: (config, obs shape, action dim, actor head params, encoder params,
observations, key, deterministic); one compilation per input shape."""
