"""SAC's configuration: ``SACConfig`` (what the agent learns) and ``ImplOptions`` (how the update
is computed). Both are frozen, hashable ``Validated`` dataclasses: static data of the jitted
update, checked on construction, loaded from YAML with ``from_dict``.

Nothing here knows an environment. What depends on the observation's structure (the set layout,
the planar pairs a symmetry moves) defaults to None; an env that has such a structure publishes
it and ``with_observation_structure`` fills it in.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Literal, Protocol

from dodgerl.networks import NATURE_CNN_OUTPUTS, SYMMETRY_GROUPS
from dodgerl.validation import Validated

EncoderSharing = Literal["critic", "separate", "convs"]
VectorEncoder = Literal["mlp", "set"]
EncoderOutput = Literal["relu", "layernorm_tanh"]
Symmetry = Literal["none", "flip_x", "d4"]
ENCODER_SHARING_MODES = typing.get_args(EncoderSharing)
VECTOR_ENCODERS = typing.get_args(VectorEncoder)
# The networks implement these; the annotations above must name the same choices.
assert typing.get_args(EncoderOutput) == NATURE_CNN_OUTPUTS
assert typing.get_args(Symmetry) == SYMMETRY_GROUPS


@dataclasses.dataclass(frozen=True)
class ImplOptions(Validated):
    """How the update is computed, not what it computes: every setting gives the same agent up
    to float rounding (``bf16_dense`` aside, which only matters with ``bf16_encoder``). A None
    field is chosen from the backend and the observation shape when the networks are built
    (``dodgerl.agents.sac.fast``). The defaults are the fastest measured (docs/perf_notes.md);
    the others exist so that ``benchmarks/sac_variants.py`` can measure them."""

    PREFIX = "agent.impl"

    conv1_space_to_depth: bool | None = None
    """NatureCNN's strided convs as stride-1 convs over space-to-depth images (exact;
    ``NatureCNN.space_to_depth``). None: the first conv's only, and only in the cuDNN form
    (8x8/4 over 3 channels becomes 2x2/1 over 48); GEMMs block the image columns themselves
    (docs/perf_notes.md v16)."""
    conv_gemm: bool | None = None
    """NatureCNN's convs as matrix products over im2col patches (``conv_as_gemm``) instead of
    cuDNN convolutions. None: GEMMs on the CPU at every size, and on an accelerator for images
    of side <= ``fast.CONV_GEMM_MAX_SIDE`` (where each form was measured faster:
    docs/perf_notes.md v15, v16)."""
    concat_online: bool = False
    """Encode obs and next obs in one call of the online (actor's) encoder, batch 2B; the
    next-obs half is detached (its gradient is exactly zero)."""
    stack_next: bool = False
    """Encode the next observations with the online and the target encoder in one call vmapped
    over the two parameter sets (fewer, larger kernels). No effect with ``concat_online`` or an
    encoder without parameters. Off: no faster (docs/perf_notes.md v9)."""
    scan_unroll: int | None = None
    """``lax.scan`` unroll factor of the K steps of one call. None: 8 for images (no per-step
    loop overhead), 1 for vectors (an unrolled vector step makes the host launch many small
    kernels one by one); docs/perf_notes.md v8."""
    bf16_dense: bool = True
    """With ``bf16_encoder``: also the encoder's final dense layer in bf16 (else float32)."""
    precast_encoder: bool = True
    """With ``bf16_encoder``: the K-step scan carries bf16 copies of the encoders' parameters,
    written by the kernels that write the parameters (Adam, Polyak), instead of converting the
    float32 parameters at each use. The same values reach the same computations: exact."""

    def check(self) -> None:
        self.require(self.scan_unroll is None or self.scan_unroll >= 1, "scan_unroll",
                     "must be >= 1 (or null: chosen from the observation)")


@dataclasses.dataclass(frozen=True)
class SACConfig(Validated):
    """SAC hyperparameters. Frozen and hashable (it is static data of the jitted update).

    Types come from the annotations, value rules from ``check()``; ``from_dict`` also rejects
    unknown keys. Errors name the key: ``agent.gamma: must lie in [0, 1]``.
    """

    PREFIX = "agent"

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
    encoder_sharing: EncoderSharing = "critic"
    """'critic': one encoder, trained by the critic loss; the actor reads stop-gradient features of
    it (DrQ). 'separate': actor and critic each own an encoder trained by their own loss (SB3).
    'convs' (images only): the critic's convolutions, trained by the critic loss, are shared; the
    actor reads their output detached through a trunk of its own (a dense layer of
    ``encoder_features`` and ``encoder_output``, trained by the actor loss), as DrQ-v2."""
    augmentation: bool = False
    """Random-shift augmentation of image observations and next observations (DrQ), on device,
    independent per sample and between obs and next obs. Ignored for vector observations."""
    augmentation_pad: int | None = 4
    """Shift range in pixels for the augmentation (edge padding then random crop). None: 4 px
    per 84 px of the image's side (DrQ's 4 at 84x84, 12 at 256x256), the same fraction of the
    image at any rendered side."""
    bf16_encoder: bool = False
    """Run the CNN in bfloat16 (params, optimiser and heads stay float32)."""
    encoder_features: int = 512
    """Width of the NatureCNN's final dense layer (image observations)."""
    encoder_downsample: int | None = 1
    """Average-pool images over k x k blocks (stride k) before NatureCNN's first conv: its
    receptive field and its dense layer then see the image at 1/k of its side. 1: no pooling
    (SB3's NatureCNN). None: k = side // 84 (at least 1), so that the CNN reads about 84 px
    whatever side the env renders (3 at 256x256: 85 px). Unused for vector observations."""
    encoder_output: EncoderOutput = "relu"
    """What follows that dense layer: 'relu' (Nature-DQN, as SB3's NatureCNN) or 'layernorm_tanh'
    (LayerNorm then tanh, the trunk of SAC-AE / DrQ; with ``encoder_features: 50`` as in DrQ)."""
    vector_encoder_arch: tuple[int, ...] = ()
    """Hidden widths of the MLP encoder for vector observations. Empty = identity: the heads read
    the raw state, as in plain SAC from state (then sharing has nothing to share)."""
    vector_encoder: VectorEncoder = "mlp"
    """Encoder of vector observations: 'mlp' (``vector_encoder_arch``) or 'set' (``SetEncoder``:
    one shared MLP over each item of ``set_layout``, sum- and max-pooled), for observations made
    of like items in any order (docs/agent.md compares the two on the dodge arena)."""
    set_layout: tuple[int, ...] | None = None
    """With ``vector_encoder: set``: (global features, features per item); the last feature of an
    item is its presence flag. None: not given; an env with such a layout publishes it
    (``with_observation_structure``)."""
    set_encoder_arch: tuple[int, ...] = (64, 64)
    """With ``vector_encoder: set``: hidden widths of the MLP shared by the items."""
    symmetry: Symmetry = "none"
    """Symmetry augmentation of transitions, on the device: each sampled transition gets its own
    random element g of the group, applied alike to its observation, next observation and action
    (the planar vectors named by ``symmetry_obs_xy`` / ``symmetry_action_xy``; square images
    are rotated / reflected whole, columns along +x and rows along -y, before any random shift).
    'none'; 'flip_x' (x -> -x); 'd4' (the square's 4 rotations and 4 reflections). Sound only
    where reward and termination are invariant and the dynamics equivariant under the group
    (docs/agent.md names where that holds in the dodge arena)."""
    symmetry_obs_xy: tuple[int, ...] | None = None
    """With ``symmetry`` and vector observations: the index of the x component of each planar
    vector of the observation (its y component is the next index); all other features must be
    invariant under the group. Unused for images. None: not given; the env publishes it."""
    symmetry_action_xy: tuple[int, ...] | None = None
    """With ``symmetry``: the same for the action. None: not given; the env publishes it."""
    log_std_min: float = -5.0
    """Lower bound of the actor's log-std (tanh-rescaled into [log_std_min, log_std_max])."""
    log_std_max: float = 2.0
    """Upper bound of the actor's log-std."""
    impl: ImplOptions = ImplOptions()
    """How the update is computed (same agent up to float rounding); see ``ImplOptions``."""

    def check(self) -> None:
        require = self.require
        for name in ("net_arch", "vector_encoder_arch", "set_layout", "set_encoder_arch"):
            require(all(w >= 1 for w in getattr(self, name) or ()), name,
                    "must be a sequence of positive integers")
        require(bool(self.net_arch), "net_arch", "needs at least one hidden layer")
        require(bool(self.set_encoder_arch), "set_encoder_arch", "needs at least one hidden layer")
        if self.set_layout is not None:
            require(len(self.set_layout) == 2, "set_layout",
                    "must be [global features, features per item]")
            require(self.set_layout[1] >= 2, "set_layout",
                    "an item needs a presence flag and at least one feature")
        require(self.vector_encoder != "set" or not self.vector_encoder_arch, "vector_encoder_arch",
                "is the 'mlp' encoder's; leave it empty with vector_encoder 'set'")
        for name in ("symmetry_obs_xy", "symmetry_action_xy"):
            xy = getattr(self, name) or ()
            require(all(i >= 0 for i in xy), name,
                    "must be a sequence of non-negative integers (x indices of (x, y) pairs)")
            covered = xy + tuple(i + 1 for i in xy)
            require(len(set(covered)) == len(covered), name, "the (x, x + 1) pairs overlap")
        for name in ("gamma", "tau", "actor_lr", "critic_lr", "temperature_lr",
                     "initial_temperature", "log_std_min", "log_std_max"):
            require(math.isfinite(getattr(self, name)), name, "must be finite")
        require(0.0 <= self.gamma <= 1.0, "gamma", "must lie in [0, 1]")
        require(0.0 < self.tau <= 1.0, "tau", "must lie in (0, 1]")
        for name in ("actor_lr", "critic_lr", "temperature_lr"):
            require(getattr(self, name) >= 0, name, "a learning rate cannot be negative")
        require(self.initial_temperature > 0, "initial_temperature",
                "must be > 0 (log(alpha) is learned)")
        require(self.log_std_min < self.log_std_max, "log_std_min",
                f"must be below log_std_max={self.log_std_max}")
        for name, low in (("batch_size", 1), ("n_critics", 1), ("encoder_features", 1)):
            require(getattr(self, name) >= low, name, f"must be an integer >= {low}")
        require(self.augmentation_pad is None or self.augmentation_pad >= 0, "augmentation_pad",
                "must be an integer >= 0 or null (4 px per 84 px of side)")
        require(self.encoder_downsample is None or self.encoder_downsample >= 1,
                "encoder_downsample", "must be an integer >= 1 (1: no pooling) or null (side // 84)")
        require(self.target_entropy is None or math.isfinite(self.target_entropy),
                "target_entropy", "must be a finite number or null")


AUTO_DOWNSAMPLE_SIDE = 84
"""``encoder_downsample: null`` pools an image of side s by s // this (at least 1), and
``augmentation_pad: null`` shifts it by 4 px per this many pixels of side."""


def image_downsample(config: SACConfig, observation_shape: tuple[int, ...]) -> int:
    """The pooling factor NatureCNN applies to images of this shape (1 for vectors)."""
    if len(observation_shape) != 3:
        return 1
    if config.encoder_downsample is not None:
        return config.encoder_downsample
    return max(1, min(observation_shape[:2]) // AUTO_DOWNSAMPLE_SIDE)


def shift_pad(config: SACConfig, observation_shape: tuple[int, ...]) -> int:
    """The random shift's range in pixels for images of this shape."""
    if config.augmentation_pad is not None:
        return config.augmentation_pad
    return round(4 * min(observation_shape[:2]) / AUTO_DOWNSAMPLE_SIDE)


class ObservationStructure(Protocol):
    """What an env publishes about its observation and action (``dodgerl.envs`` has one)."""

    set_layout: tuple[int, ...] | None
    planar_xy: tuple[int, ...] | None
    action_planar_xy: tuple[int, ...] | None


def with_observation_structure(config: SACConfig,
                               structure: ObservationStructure | None) -> SACConfig:
    """``config`` with the fields it leaves None (not given) taken from the env's published
    structure: ``set_layout``, ``symmetry_obs_xy`` <- ``planar_xy``, ``symmetry_action_xy`` <-
    ``action_planar_xy``. Fields the config names keep its values; ``structure`` None (an env
    that publishes nothing) returns ``config`` as is.

    E.g. ``config = sac.with_observation_structure(config, env.unwrapped.observation_structure)``
    before ``sac.create``.
    """
    if structure is None:
        return config
    published = {"set_layout": structure.set_layout,
                 "symmetry_obs_xy": structure.planar_xy,
                 "symmetry_action_xy": structure.action_planar_xy}
    missing = {name: value for name, value in published.items()
               if getattr(config, name) is None and value is not None}
    return dataclasses.replace(config, **missing) if missing else config
