"""Soft Actor-Critic: the agent pytree, its pure losses, and the jitted ``act`` / ``update``.

The whole agent is one ``flax.struct.PyTreeNode`` (critic TrainState with ``target_params``, actor
TrainState, log-temperature TrainState, plus static config and shapes), so one Orbax call saves or
restores it. ``update`` runs K gradient steps inside one compiled call (``lax.scan`` over a
leading K axis of the batch). Each step is a *simultaneous* update (as jaxrl_m): the critic,
actor and temperature losses are all evaluated at the parameters the step starts from, so the
observations go through the critic encoder once per step and feed both critic and actor losses.

Reading guide: ``SACConfig`` -> ``create`` -> the loss functions (``critic_target``,
``critic_loss``, ``actor_loss``, ``temperature_loss``) -> ``compute_losses`` -> ``sac_step`` ->
``SACAgent.update``.
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

from dodgerl.networks import (
    NATURE_CNN_OUTPUTS,
    SYMMETRY_GROUPS,
    CriticEnsemble,
    MLPEncoder,
    NatureCNN,
    SetEncoder,
    TanhGaussianActorHead,
    apply_image_symmetries,
    apply_planar_symmetries,
    nature_cnn_min_size,
    precast_params,
    random_planar_symmetries,
    random_shift,
    sample_tanh_gaussian,
)

ENCODER_SHARING_MODES = ("critic", "separate")
VECTOR_ENCODERS = ("mlp", "set")
# The dodge env's 65-dim vector observation (dodgerl.envs.dodge_env, docs/env.md): 5 global
# features (player x, y, vx, vy, dash cooldown), then 10 projectile rows of 6 (relative x, y, vx,
# vy, distance, presence flag).
DODGE_OBS_LAYOUT = (5, 6)
# Its planar (x, y) vectors, by the index of their x component: the player's position and
# velocity, then each projectile row's relative position and velocity.
DODGE_OBS_XY = (0, 2) + tuple(
    DODGE_OBS_LAYOUT[0] + DODGE_OBS_LAYOUT[1] * row + j for row in range(10) for j in (0, 2)
)
SYMMETRY_KEY_SALT = 0x5E7
"""compute_losses draws the symmetry of a step from ``fold_in(key, SYMMETRY_KEY_SALT)``."""


@dataclasses.dataclass(frozen=True)
class ImplOptions:
    """How the update is computed, not what it computes: every setting gives the same agent up
    to float rounding (``bf16_dense`` aside, which only matters with ``bf16_encoder``). The
    defaults are the fastest measured on an H100 (docs/perf_notes.md); the others exist so that
    ``benchmarks/sac_variants.py`` can measure them. Change with ``set_impl_options``."""

    conv1_space_to_depth: bool | None = None
    """NatureCNN's strided convs as stride-1 convs over space-to-depth images (exact;
    ``NatureCNN.space_to_depth``). None: the first conv's, as a cuDNN convolution only (8x8/4
    over 3 channels becomes 2x2/1 over 48); GEMMs block the image columns themselves
    (``conv_as_gemm``), and their space-to-depth form measured slower (docs/perf_notes.md, v16)."""
    conv_gemm: bool | None = None
    """NatureCNN's convs as matrix products over im2col patches (``conv_as_gemm``): GEMM kernels
    instead of cuDNN convolutions. None: on a GPU for images of side <= ``CONV_GEMM_MAX_SIDE``
    (H200, batch 64, K = 8: 84x84 fp32 2,498 vs 1,122 grad steps/s, bf16 2,693 vs 2,091;
    256x256 bf16 795 vs 1,118; docs/perf_notes.md, v15), on the CPU at every size (2-core box,
    fp32, batch 64: 256x256 1.2-1.5 vs 26-28 s per step at K = 1, 1.1-1.4 vs 3.2-3.6 s at K = 8;
    84x84 0.10-0.13 vs 0.72-1.18 s at K = 1; v16). Decided by ``jax.default_backend()`` when the networks are built."""
    concat_online: bool = False
    """Encode obs and next obs in one call of the online (actor's) encoder, batch 2B, and run the
    actor head once over both; the next-obs half is detached (its gradient is exactly zero)."""
    stack_next: bool = False
    """Encode the next observations with the online (actor's) and the target encoder in one call
    vmapped over the two parameter sets: conv1 becomes one conv with twice the output channels,
    the later convs grouped convs, the dense one batched matmul (fewer, larger kernels). No effect
    with ``concat_online`` or an encoder without parameters. Measured slower or no faster on an
    H200 (docs/perf_notes.md, v9), so off."""
    scan_unroll: int | None = None
    """``lax.scan`` unroll factor of the K steps (K or more: no device loop at all); None: 8 for
    image observations, 1 for vectors. Unrolled image steps compile slower (first call ~13 s
    instead of ~3 s on the H100) but skip the per-iteration loop overhead (bf16 256x256: 1.16 ->
    1.03 ms/step). A vector step is ~60 small kernels, which the host launches one by one in an
    unrolled body: at K = 64 on the H100 the call's dispatch blocks the host 2.7-3.6 ms with
    unroll 8 (27 ms fully unrolled) and ~1.0 ms with unroll 1, and the device finishes no later
    (docs/perf_notes.md, v8)."""
    bf16_dense: bool = True
    """With ``bf16_encoder``: also the final dense layer in bf16 (else it computes in fp32)."""
    precast_encoder: bool = True
    """With ``bf16_encoder``: the K-step scan carries bf16 copies of the encoders' parameters
    (online and target), written by the same fused kernels that write the parameters after each
    step's Adam and Polyak updates, instead of converting the float32 parameters at each use
    (each conversion re-reads the 103 MB dense kernel at 256x256). The same values reach the
    same computations: exact (``tests/test_sac.py``)."""


_IMPL = ImplOptions()

CONV_GEMM_MAX_SIDE = 128
"""``ImplOptions.conv_gemm=None`` computes the convs as GEMMs for images up to this side on
accelerators (faster at 84, slower at 256 on an H200; the sides between are not measured), at
every size on the CPU backend."""


def _default_conv_gemm(observation_shape: tuple[int, ...]) -> bool:
    return (jax.default_backend() == "cpu"
            or max(observation_shape[:2]) <= CONV_GEMM_MAX_SIDE)


def impl_options() -> ImplOptions:
    """The implementation options in effect."""
    return _IMPL


def set_impl_options(**changes: Any) -> ImplOptions:
    """Replace implementation options (benchmarks only) and drop every compiled program and
    cached network so the next call traces with them. Returns the previous options."""
    global _IMPL
    previous = _IMPL
    _IMPL = dataclasses.replace(_IMPL, **changes)
    build_networks.cache_clear()
    _update_jit.clear_cache()
    _update_from_jit.clear_cache()
    _act_jit.clear_cache()
    return previous


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SACConfig:
    """SAC hyperparameters. Frozen and hashable (it is static data of the jitted update).

    Every value is validated on construction; ``from_dict`` also rejects unknown keys.
    """

    gamma: float = 0.99
    """Discount factor, in [0, 1]."""
    tau: float = 0.005
    """Polyak rate of the target critic (encoder included): target <- tau*online + (1-tau)*target."""
    actor_lr: float = 3e-4
    """Adam learning rate of the actor (its head, and its encoder with ``separate`` sharing)."""
    critic_lr: float = 3e-4
    """Adam learning rate of the critic ensemble and its encoder."""
    temperature_lr: float = 3e-4
    """Adam learning rate of log(alpha)."""
    batch_size: int = 256
    """Transitions per gradient step. Read by the training loop when it samples; ``update`` itself
    takes any B (a new B compiles once more)."""
    net_arch: tuple[int, ...] = (256, 256)
    """Hidden widths of the actor head and of each critic head."""
    n_critics: int = 2
    """Number of Q-heads in the ensemble; targets and the actor use the min over them."""
    critic_layer_norm: bool = False
    """LayerNorm after every hidden layer of each Q-head (Dense -> LayerNorm -> ReLU, as the
    critics of DroQ / RLPD); the actor head is unchanged."""
    initial_temperature: float = 1.0
    """alpha at creation (> 0); log(alpha) is the learned parameter."""
    target_entropy: float | None = None
    """Entropy the temperature steers towards; None means -action_dim."""
    encoder_sharing: str = "critic"
    """'critic': one encoder, trained by the critic loss; the actor reads stop-gradient features of
    it (DrQ). 'separate': actor and critic each own an encoder trained by their own loss (SB3)."""
    augmentation: bool = False
    """Random-shift augmentation of image observations and next observations (DrQ), on device,
    independent per sample and between obs and next obs. Ignored for vector observations."""
    augmentation_pad: int = 4
    """Shift range in pixels for the augmentation (edge padding then random crop)."""
    bf16_encoder: bool = False
    """Run the CNN in bfloat16 (params, optimiser and heads stay float32)."""
    encoder_features: int = 512
    """Width of the NatureCNN's final dense layer (image observations)."""
    encoder_output: str = "relu"
    """What follows that dense layer: 'relu' (Nature-DQN, as SB3's NatureCNN) or 'layernorm_tanh'
    (LayerNorm then tanh, the trunk of SAC-AE / DrQ; with ``encoder_features: 50`` as in DrQ)."""
    vector_encoder_arch: tuple[int, ...] = ()
    """Hidden widths of the MLP encoder for vector observations. Empty = identity: the heads read
    the raw state, as in plain SAC from state (then sharing has nothing to share)."""
    vector_encoder: str = "mlp"
    """Encoder of vector observations: 'mlp' (``vector_encoder_arch``) or 'set' (``SetEncoder``:
    one shared MLP over each item of ``set_layout``, sum- and max-pooled). It represents a good
    policy of the dodge arena's state far better than the MLP (behaviour cloning, docs/agent.md)
    and learns levels 1 and 2 faster (docs/agent.md); both vector configs use it."""
    set_layout: tuple[int, ...] = DODGE_OBS_LAYOUT
    """With ``vector_encoder: set``: (global features, features per item); the last feature of an
    item is its presence flag. (5, 6) is the dodge env's vector observation."""
    set_encoder_arch: tuple[int, ...] = (64, 64)
    """With ``vector_encoder: set``: hidden widths of the MLP shared by the items."""
    symmetry: str = "none"
    """Symmetry augmentation of transitions, on the device: each sampled transition gets its own
    random element g of the group, applied alike to its observation, next observation and action
    (the planar vectors named by ``symmetry_obs_xy`` / ``symmetry_action_xy``; square images
    are rotated / reflected whole, columns along +x and rows along -y as the dodge rasterizer
    draws them, before any random shift).
    'none'; 'flip_x' (x -> -x); 'd4' (the square's 4 rotations and 4 reflections). Sound only
    where reward and termination are invariant and the dynamics equivariant under the group: the
    dodge arena's level 1 under 'flip_x' (its spawns are mirror-symmetric about the north-south
    axis), levels 2 and 3 under 'd4' (spawn directions uniform all around a square arena)."""
    symmetry_obs_xy: tuple[int, ...] = DODGE_OBS_XY
    """With ``symmetry`` and vector observations: the index of the x component of each planar
    vector of the observation (its y component is the next index); all other features must be
    invariant under the group. Default: the dodge env's vector observation (``DODGE_OBS_XY``).
    Unused for images."""
    symmetry_action_xy: tuple[int, ...] = (0,)
    """With ``symmetry``: the same for the action (the dodge env's desired velocity is 0, 1)."""
    log_std_min: float = -5.0
    """Lower bound of the actor's log-std (tanh-rescaled into [log_std_min, log_std_max])."""
    log_std_max: float = 2.0
    """Upper bound of the actor's log-std."""

    def __post_init__(self) -> None:
        def fail(name: str, why: str) -> None:
            raise ValueError(f"SACConfig.{name}={getattr(self, name)!r}: {why}")

        # Integer sequences (YAML gives lists): widths are positive, observation/action indices
        # non-negative.
        for name, least, what in (
            ("net_arch", 1, "positive integers"),
            ("vector_encoder_arch", 1, "positive integers"),
            ("set_layout", 1, "positive integers"),
            ("set_encoder_arch", 1, "positive integers"),
            ("symmetry_obs_xy", 0, "non-negative integers (x indices of (x, y) pairs)"),
            ("symmetry_action_xy", 0, "non-negative integers (x indices of (x, y) pairs)"),
        ):
            value = getattr(self, name)
            if isinstance(value, list):
                value = tuple(value)
            if not isinstance(value, tuple) or not all(
                isinstance(w, (int, np.integer)) and not isinstance(w, bool) and w >= least
                for w in value
            ):
                fail(name, f"must be a sequence of {what}")
            object.__setattr__(self, name, tuple(int(w) for w in value))
        if not self.net_arch:
            fail("net_arch", "needs at least one hidden layer")
        if self.vector_encoder not in VECTOR_ENCODERS:
            fail("vector_encoder", f"must be one of {VECTOR_ENCODERS}")
        if len(self.set_layout) != 2:
            fail("set_layout", "must be [global features, features per item]")
        if self.set_layout[1] < 2:
            fail("set_layout", "an item needs a presence flag and at least one feature")
        if not self.set_encoder_arch:
            fail("set_encoder_arch", "needs at least one hidden layer")
        if self.vector_encoder == "set" and self.vector_encoder_arch:
            fail("vector_encoder_arch", "is the 'mlp' encoder's; leave it empty with vector_encoder 'set'")
        if self.symmetry not in SYMMETRY_GROUPS:
            fail("symmetry", f"must be one of {SYMMETRY_GROUPS}")
        for name in ("symmetry_obs_xy", "symmetry_action_xy"):
            covered = getattr(self, name) + tuple(i + 1 for i in getattr(self, name))
            if len(set(covered)) != len(covered):
                fail(name, "the (x, x + 1) pairs overlap")
        for name in ("gamma", "tau", "actor_lr", "critic_lr", "temperature_lr",
                     "initial_temperature", "log_std_min", "log_std_max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                fail(name, "must be a number")
            if not np.isfinite(value):
                fail(name, "must be finite")
        if not 0.0 <= self.gamma <= 1.0:
            fail("gamma", "must lie in [0, 1]")
        if not 0.0 < self.tau <= 1.0:
            fail("tau", "must lie in (0, 1]")
        for name in ("actor_lr", "critic_lr", "temperature_lr"):
            if getattr(self, name) < 0:
                fail(name, "a learning rate cannot be negative")
        if self.initial_temperature <= 0:
            fail("initial_temperature", "must be > 0 (log(alpha) is learned)")
        if self.log_std_min >= self.log_std_max:
            fail("log_std_min", f"must be below log_std_max={self.log_std_max}")
        for name, low in (("batch_size", 1), ("n_critics", 1), ("encoder_features", 1),
                          ("augmentation_pad", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                fail(name, f"must be an integer >= {low}")
        if self.target_entropy is not None and (
            isinstance(self.target_entropy, bool)
            or not isinstance(self.target_entropy, (int, float, np.number))
            or not np.isfinite(self.target_entropy)
        ):
            fail("target_entropy", "must be a finite number or None")
        if self.encoder_sharing not in ENCODER_SHARING_MODES:
            fail("encoder_sharing", f"must be one of {ENCODER_SHARING_MODES}")
        if self.encoder_output not in NATURE_CNN_OUTPUTS:
            fail("encoder_output", f"must be one of {NATURE_CNN_OUTPUTS}")
        for name in ("augmentation", "bf16_encoder", "critic_layer_norm"):
            if not isinstance(getattr(self, name), bool):
                fail(name, "must be true or false")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SACConfig:
        """Build from a plain mapping (e.g. YAML); unknown keys and bad values raise ValueError."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"unknown SACConfig key(s) {unknown}; known keys are {sorted(known)}"
            )
        return cls(**dict(d))

    def to_dict(self) -> dict[str, Any]:
        """Plain-data copy (tuples become lists) for YAML/JSON."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }


# --------------------------------------------------------------------------------------------
# Data and state containers
# --------------------------------------------------------------------------------------------


class Batch(struct.PyTreeNode):
    """Transitions. ``update`` wants a leading K axis on every field: observations (K, B, *obs),
    actions (K, B, d), rewards (K, B), next_observations (K, B, *obs), terminated (K, B) float32
    (1.0 where the episode ended by termination: no bootstrap; truncations pass 0.0).

    ``discounts`` (K, B), optional: the factor that multiplies the bootstrapped value of each
    transition instead of ``config.gamma``. n-step returns pass gamma**m here, m the steps summed
    into ``rewards`` (``ReplayBuffer(n_step=n)`` samples them); None means one-step (gamma)."""

    observations: jax.Array
    actions: jax.Array
    rewards: jax.Array
    next_observations: jax.Array
    terminated: jax.Array
    discounts: jax.Array | None = None


class CriticTrainState(TrainState):
    """A TrainState that also carries the Polyak-averaged target parameters."""

    target_params: Any = None


@dataclasses.dataclass(frozen=True)
class Networks:
    """The Flax modules of one agent (built from static data; holds no parameters)."""

    encoder: nn.Module
    critic_head: CriticEnsemble
    actor_head: TanhGaussianActorHead
    is_image: bool


@functools.lru_cache(maxsize=None)
def build_networks(
    config: SACConfig, observation_shape: tuple[int, ...], action_dim: int
) -> Networks:
    """Modules for these static settings (cached, so agents with equal settings share them)."""
    is_image = len(observation_shape) == 3
    if is_image:
        dtype = jnp.bfloat16 if config.bf16_encoder else jnp.float32
        encoder = NatureCNN(
            features=config.encoder_features,
            dtype=dtype,
            dense_dtype=dtype if _IMPL.bf16_dense else jnp.float32,
            space_to_depth=_IMPL.conv1_space_to_depth,
            output=config.encoder_output,
            conv_gemm=(_default_conv_gemm(observation_shape)
                       if _IMPL.conv_gemm is None else _IMPL.conv_gemm),
        )
    elif config.vector_encoder == "set":
        encoder = SetEncoder(*config.set_layout, features=config.set_encoder_arch)
    else:
        encoder = MLPEncoder(config.vector_encoder_arch)
    return Networks(
        encoder=encoder,
        critic_head=CriticEnsemble(config.net_arch, config.n_critics, config.critic_layer_norm),
        actor_head=TanhGaussianActorHead(
            config.net_arch, action_dim, config.log_std_min, config.log_std_max
        ),
        is_image=is_image,
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

    critic.params = {"encoder": ..., "head": ...} (the encoder is shared with the actor when
    ``encoder_sharing == "critic"``); critic.target_params has the same structure.
    actor.params = {"head": ...} with critic sharing, {"encoder": ..., "head": ...} with separate.
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
        if self.config.encoder_sharing == "critic":
            encoder_params = self.critic.params["encoder"]
        else:
            encoder_params = self.actor.params["encoder"]
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
        single-step calls with those keys reproduce one K-step call. Returns the new agent and metrics averaged
        over the K steps. The agent's buffers are donated: use the returned agent, not ``self``.
        """
        _check_batch(self, batch)
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


# --------------------------------------------------------------------------------------------
# Creation
# --------------------------------------------------------------------------------------------


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


def create(
    key: jax.Array,
    observation_space: gymnasium.spaces.Space,
    action_space: gymnasium.spaces.Space,
    config: SACConfig | None = None,
) -> SACAgent:
    """A freshly initialised agent for these gymnasium spaces.

    Vector observations (1-D float Box) get the MLP encoder (or the set encoder,
    ``vector_encoder: set``); uint8 (H, W, C) images (C = 3*k for
    k stacked frames) get NatureCNN. The action space must be Box([-1, 1]^d).
    """
    config = SACConfig() if config is None else config
    if not isinstance(config, SACConfig):
        raise ValueError(f"config must be a SACConfig, got {type(config).__name__}")
    observation_shape, action_dim = _check_spaces(observation_space, action_space)
    if len(observation_shape) == 1 and config.vector_encoder == "set":
        (dims,), (g, m) = observation_shape, config.set_layout
        if dims <= g or (dims - g) % m:
            raise ValueError(
                f"SACConfig.set_layout={list(config.set_layout)}: a {dims}-dim observation is not "
                f"{g} global features followed by items of {m} features"
            )
    if config.symmetry != "none":
        checks = [("symmetry_action_xy", action_dim)]
        if len(observation_shape) == 1:
            checks.append(("symmetry_obs_xy", observation_shape[0]))
        elif observation_shape[0] != observation_shape[1]:
            raise ValueError(
                f"SACConfig.symmetry={config.symmetry!r}: the images must be square (the "
                f"observation is {observation_shape})"
            )
        for name, size in checks:
            xy = getattr(config, name)
            if xy and max(xy) + 1 >= size:
                raise ValueError(
                    f"SACConfig.{name}={list(xy)}: the pair at index {max(xy)} needs {max(xy) + 2} "
                    f"features, the {'observation' if name == 'symmetry_obs_xy' else 'action'} "
                    f"has {size}"
                )
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
    actor_params = {"head": nets.actor_head.init(k_actor, features)["params"]}
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
    agent = SACAgent(
        critic=critic,
        actor=actor,
        temperature=temperature,
        config=config,
        observation_shape=observation_shape,
        action_dim=action_dim,
    )
    # Commit every leaf to the default device. Freshly initialised arrays are uncommitted, the
    # update's outputs are committed: without this the second update call compiles the whole
    # program again for the new input shardings (seconds on a CPU, ~20 s on a GPU with K = 16).
    return jax.device_put(agent, jax.devices()[0])


# --------------------------------------------------------------------------------------------
# Losses: small pure functions on arrays, each tested against numpy in tests/test_sac.py
# --------------------------------------------------------------------------------------------


def critic_target(
    rewards: jax.Array,
    terminated: jax.Array,
    next_target_q: jax.Array,
    next_log_probs: jax.Array,
    temperature: jax.Array,
    gamma: float | jax.Array,
) -> jax.Array:
    """Soft TD target y = r + gamma * (1 - terminated) * (min_i Q'_i(s', a') - alpha * log pi(a'|s')).

    next_target_q is (n_critics, B); everything else is (B,) or scalar (``gamma`` may be a (B,)
    array of per-transition discounts, e.g. gamma**m for m-step returns). Truncated transitions
    must arrive with terminated = 0 so that they bootstrap.
    """
    assert next_target_q.ndim == 2 and next_target_q.shape[1:] == rewards.shape, (
        next_target_q.shape, rewards.shape)
    assert terminated.shape == rewards.shape == next_log_probs.shape
    soft_value = jnp.min(next_target_q, axis=0) - temperature * next_log_probs
    return jax.lax.stop_gradient(rewards + gamma * (1.0 - terminated) * soft_value)


def critic_loss(q: jax.Array, target: jax.Array) -> jax.Array:
    """Sum over critics of the batch-mean of 0.5 * (Q_i(s, a) - y)^2; q is (n_critics, B)."""
    assert q.ndim == 2 and q.shape[1:] == target.shape, (q.shape, target.shape)
    return 0.5 * jnp.sum(jnp.mean(jnp.square(q - target[None]), axis=1))


def actor_loss(log_probs: jax.Array, q: jax.Array, temperature: jax.Array) -> jax.Array:
    """Batch-mean of alpha * log pi(a|s) - min_i Q_i(s, a) with a ~ pi (reparameterised)."""
    assert q.ndim == 2 and q.shape[1:] == log_probs.shape, (q.shape, log_probs.shape)
    return jnp.mean(temperature * log_probs - jnp.min(q, axis=0))


def temperature_loss(
    log_temperature: jax.Array, log_probs: jax.Array, target_entropy: float
) -> jax.Array:
    """-log(alpha) * mean(log pi + target_entropy) (SB3's form): alpha grows while the policy's
    entropy -E[log pi] is below the target and shrinks above it."""
    return -log_temperature * jnp.mean(jax.lax.stop_gradient(log_probs) + target_entropy)


def polyak_update(params: Any, target_params: Any, tau: float) -> Any:
    """target <- tau * params + (1 - tau) * target, leaf by leaf."""
    return optax.incremental_update(params, target_params, step_size=tau)


# --------------------------------------------------------------------------------------------
# One gradient step
# --------------------------------------------------------------------------------------------


def _encode(nets: Networks, encoder_params: Any, observations: jax.Array) -> jax.Array:
    return nets.encoder.apply({"params": encoder_params}, observations)


def _precast(agent: SACAgent) -> dict[str, Any] | None:
    """Each encoder's parameters with the leaves it computes in bf16 already converted
    (``ImplOptions.precast_encoder``), keyed "critic", "target" (and "actor" with separate
    sharing); None when nothing would be converted (vectors, float32 encoders, option off)."""
    nets, config = agent.networks, agent.config
    if not (_IMPL.precast_encoder and nets.is_image and config.bf16_encoder):
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


def _augment(agent: SACAgent, key: jax.Array, observations: jax.Array) -> jax.Array:
    if agent.networks.is_image and agent.config.augmentation:
        return random_shift(key, observations, agent.config.augmentation_pad)
    return observations


def apply_symmetry(config: SACConfig, key: jax.Array, batch: Batch) -> Batch:
    """The batch with one random element of ``config.symmetry``'s group applied to each
    transition: the same element to its observation, next observation and action (images, of
    shape (B, S, S, C), are transformed whole; vectors at ``symmetry_obs_xy``)."""
    swap, signs = random_planar_symmetries(key, batch.rewards.shape[0], config.symmetry)
    def obs(x: jax.Array) -> jax.Array:
        if x.ndim == 4:
            return apply_image_symmetries(x, swap, signs, config.symmetry)
        return apply_planar_symmetries(x, config.symmetry_obs_xy, swap, signs)
    return batch.replace(
        observations=obs(batch.observations),
        next_observations=obs(batch.next_observations),
        actions=apply_planar_symmetries(batch.actions, config.symmetry_action_xy, swap, signs),
    )


def compute_losses(
    agent: SACAgent,
    critic_params: Any,
    actor_params: Any,
    temperature_params: Any,
    batch: Batch,
    key: jax.Array,
    precast: Mapping[str, Any] | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The step's total loss (critic + actor + temperature) and metrics, for a batch without K axis.

    Each term depends only on its own parameters (the others enter through stop_gradient), so
    one gradient of the sum is each network's gradient of its own loss. Observations are encoded
    once by the critic encoder; with ``critic`` sharing the actor reads those features detached.
    The actor head runs once over [obs features; next obs features] (the next half detached).
    ``precast``: what ``_precast(agent)`` returns for these parameters, or None.
    """
    nets, config = agent.networks, agent.config
    if config.symmetry != "none":
        # Its own key, folded in, so the other draws are those of the run without symmetry.
        batch = apply_symmetry(config, jax.random.fold_in(key, SYMMETRY_KEY_SALT), batch)
    k_aug, k_aug_next, k_next_action, k_action = jax.random.split(key, 4)
    observations = _augment(agent, k_aug, batch.observations)
    next_observations = _augment(agent, k_aug_next, batch.next_observations)
    log_temperature = temperature_params["log_temperature"]
    temperature = jax.lax.stop_gradient(jnp.exp(log_temperature))

    batch_size = batch.rewards.shape[0]
    sg = jax.lax.stop_gradient
    critic_encoder = critic_params["encoder"]
    target_encoder = agent.critic.target_params["encoder"]
    actor_encoder = actor_params.get("encoder")
    if precast is not None:
        critic_encoder = _with_precast(critic_encoder, precast["critic"])
        target_encoder = precast["target"]
        if actor_encoder is not None:
            actor_encoder = _with_precast(actor_encoder, precast["actor"])
    if config.encoder_sharing == "critic":
        online_encoder = critic_encoder  # the actor reads it detached
    else:
        online_encoder = actor_encoder
    # stack_next (exclusive with concat_online) needs parameters to stack: the identity vector
    # encoder has none.
    stack_next = (_IMPL.stack_next and not _IMPL.concat_online
                  and bool(jax.tree.leaves(online_encoder)))
    if _IMPL.concat_online:
        # One call of the online encoder over [obs; next obs]; the next-obs half is detached, so
        # its cotangent is exactly zero and the gradients equal the two-call form below.
        both = _encode(nets, online_encoder,
                       jnp.concatenate([observations, next_observations], axis=0))
        online_features, next_features = both[:batch_size], sg(both[batch_size:])
    else:
        online_features = _encode(nets, online_encoder, observations)
        if not stack_next:
            next_features = _encode(nets, sg(online_encoder), next_observations)
    target_params = agent.critic.target_params
    if stack_next:
        # Both next-obs encodings in one call over stacked (online, target) encoder params.
        stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), sg(online_encoder),
                               target_encoder)
        next_features, next_target_features = jax.vmap(
            lambda p: _encode(nets, p, next_observations))(stacked)
    else:
        next_target_features = _encode(nets, target_encoder, next_observations)
    if config.encoder_sharing == "critic":
        critic_features = online_features
        actor_features = sg(critic_features)
    else:
        critic_features = _encode(nets, critic_encoder, observations)
        actor_features = online_features

    # Actor head, once over [obs features; next obs features]: the next half is detached.
    mean, log_std = nets.actor_head.apply(
        {"params": actor_params["head"]},
        jnp.concatenate([actor_features, next_features], axis=0),
    )
    next_actions, next_log_probs = sample_tanh_gaussian(
        k_next_action, sg(mean[batch_size:]), sg(log_std[batch_size:])
    )
    actions, log_probs = sample_tanh_gaussian(
        k_action, mean[:batch_size], log_std[:batch_size]
    )

    # Target side: no gradient flows here.
    next_target_q = nets.critic_head.apply(
        {"params": target_params["head"]}, next_target_features, next_actions
    )
    target = critic_target(
        batch.rewards, batch.terminated, next_target_q, next_log_probs, temperature,
        config.gamma if batch.discounts is None else batch.discounts,
    )

    # Critic: gradients into the critic heads and the critic encoder.
    q = nets.critic_head.apply({"params": critic_params["head"]}, critic_features, batch.actions)
    loss_critic = critic_loss(q, target)

    # Actor: gradients into the actor head (and its own encoder with separate sharing), through
    # the frozen critic head.
    q_policy = nets.critic_head.apply(
        {"params": sg(critic_params["head"])}, sg(critic_features), actions
    )
    loss_actor = actor_loss(log_probs, q_policy, temperature)

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


def sac_step(agent: SACAgent, batch: Batch, key: jax.Array,
             precast: Mapping[str, Any] | None = None) -> tuple[SACAgent, dict[str, jax.Array]]:
    """One simultaneous gradient step on a batch without K axis, then the Polyak target update.
    ``precast``: ``_precast(agent)`` carried from the previous step, or None (same result)."""
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
        return (agent, None if precast is None else _precast(agent)), metrics

    unroll = _IMPL.scan_unroll
    if unroll is None:
        unroll = 8 if len(agent.observation_shape) == 3 else 1
    (agent, _), metrics = jax.lax.scan(body, (agent, _precast(agent)), (xs, keys),
                                       unroll=max(1, min(unroll, num_steps)))
    return agent, jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics)


def _update(agent: SACAgent, batch: Batch, key: jax.Array) -> tuple[SACAgent, dict[str, jax.Array]]:
    return _scan_steps(agent, batch, batch.rewards.shape[0], key, lambda b: b)


_update_jit = jax.jit(_update, donate_argnums=0)
"""The compiled update; ``_update_jit._cache_size()`` counts its compilations."""


def _update_from(agent: SACAgent, store: Any, indices: Any, key: jax.Array,
                 gather: Callable[[Any, Any], Mapping[str, jax.Array]]
                 ) -> tuple[SACAgent, dict[str, jax.Array]]:
    num_steps = jax.tree.leaves(indices)[0].shape[0]
    return _scan_steps(agent, indices, num_steps, key, lambda idx: Batch(**gather(store, idx)))


_update_from_jit = jax.jit(_update_from, donate_argnums=0, static_argnums=4)
"""The compiled update over batches gathered on the device (``SACAgent.update_from``)."""


def _act(config: SACConfig, observation_shape: tuple[int, ...], action_dim: int,
         head_params: Any, encoder_params: Any, observations: jax.Array, key: jax.Array,
         deterministic: bool) -> jax.Array:
    nets = build_networks(config, observation_shape, action_dim)
    single = observations.ndim == len(observation_shape)
    if single:
        observations = observations[None]
    features = _encode(nets, encoder_params, observations)
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


def _check_batch(agent: SACAgent, batch: Batch) -> None:
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


__all__ = [
    "Batch",
    "CriticTrainState",
    "SACAgent",
    "SACConfig",
    "actor_loss",
    "build_networks",
    "compute_losses",
    "create",
    "critic_loss",
    "critic_target",
    "polyak_update",
    "sac_step",
    "temperature_loss",
]
