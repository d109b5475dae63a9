"""Soft Actor-Critic (Haarnoja et al. 2018, arXiv:1812.05905) in JAX, for gymnasium Box envs.

Reading guide, one job per module:

- ``config``: ``SACConfig`` (hyperparameters), ``ImplOptions`` (how the update is computed), and
  ``with_observation_structure`` (fills in what an env publishes about its observation);
- ``losses``: the paper's losses, each beside its equation, and one step's composition of them;
- ``update``: K gradient steps per compiled call (``lax.scan``) and the batch checks;
- ``agent``: ``SACAgent`` (one pytree), ``Policy``, ``build_networks``, ``create``, acting;
- ``fast``: the encoder passes of a step, computed fast (bf16 copies, fused calls, conv forms);
- ``transforms``: symmetry and random-shift augmentation of a sampled batch;
- ``state``: ``Batch`` and ``CriticTrainState``;
- ``seeds``: N agents stacked on a leading seed axis, updated and acting in one vmapped call
  (``stack``, ``create_stacked``, ``update_stacked``, ``act_stacked``, ``shard_seeds``).

Typical use::

    config = sac.with_observation_structure(sac.SACConfig(), env.unwrapped.observation_structure)
    agent = sac.create(jax.random.key(0), env.observation_space, env.action_space, config)
    agent, metrics = agent.update(batch, key)      # batch: sac.Batch with a leading K axis
"""

from dodgerl.agents.sac.agent import Networks, Policy, SACAgent, _act_jit, build_networks, create
from dodgerl.agents.sac.config import (
    ENCODER_SHARING_MODES,
    VECTOR_ENCODERS,
    ImplOptions,
    ObservationStructure,
    SACConfig,
    image_downsample,
    shift_pad,
    with_observation_structure,
)
from dodgerl.agents.sac.fast import (
    CONV_GEMM_MAX_SIDE,
    StepFeatures,
    encode_step,
    precast_encoders,
    resolve_impl,
)
from dodgerl.agents.sac.losses import (
    actor_loss,
    compute_losses,
    critic_loss,
    critic_target,
    polyak_update,
    temperature_loss,
)
from dodgerl.agents.sac.seeds import (
    _act_stacked_jit,
    _update_from_stacked_jit,
    _update_stacked_jit,
    act_stacked,
    create_stacked,
    seed_count,
    shard_seeds,
    stack,
    unstack,
    update_from_stacked,
    update_stacked,
)
from dodgerl.agents.sac.state import Batch, CriticTrainState
from dodgerl.agents.sac.transforms import SYMMETRY_KEY_SALT, apply_symmetry, augment_batch
from dodgerl.agents.sac.update import _update_from_jit, _update_jit, check_batch, sac_step
from dodgerl.validation import ConfigError

__all__ = [
    "CONV_GEMM_MAX_SIDE",
    "ENCODER_SHARING_MODES",
    "SYMMETRY_KEY_SALT",
    "VECTOR_ENCODERS",
    "Batch",
    "ConfigError",
    "CriticTrainState",
    "ImplOptions",
    "Networks",
    "ObservationStructure",
    "Policy",
    "SACAgent",
    "SACConfig",
    "StepFeatures",
    "act_stacked",
    "actor_loss",
    "apply_symmetry",
    "augment_batch",
    "build_networks",
    "check_batch",
    "compute_losses",
    "create",
    "create_stacked",
    "critic_loss",
    "critic_target",
    "encode_step",
    "image_downsample",
    "polyak_update",
    "precast_encoders",
    "resolve_impl",
    "sac_step",
    "seed_count",
    "shard_seeds",
    "shift_pad",
    "stack",
    "temperature_loss",
    "unstack",
    "update_from_stacked",
    "update_stacked",
    "with_observation_structure",
    # Compiled entry points, exported for their compile counters (``_cache_size()``).
    "_act_jit",
    "_act_stacked_jit",
    "_update_from_jit",
    "_update_from_stacked_jit",
    "_update_jit",
    "_update_stacked_jit",
]
