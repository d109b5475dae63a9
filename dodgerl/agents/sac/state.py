"""The data SAC trains on and the train state of its critic: ``Batch`` and ``CriticTrainState``."""

from __future__ import annotations

from typing import Any

import jax
from flax import struct
from flax.training.train_state import TrainState


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
