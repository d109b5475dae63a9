"""Data augmentation of a sampled batch, on the device: the config's symmetry group, then DrQ's
random shifts of images."""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax

from dodgerl.agents.sac.config import SACConfig, shift_pad
from dodgerl.agents.sac.state import Batch
from dodgerl.networks import (
    apply_image_symmetries,
    apply_planar_symmetries,
    random_planar_symmetries,
    random_shift,
)

if TYPE_CHECKING:
    from dodgerl.agents.sac.agent import SACAgent

SYMMETRY_KEY_SALT = 0x5E7
"""``augment_batch`` draws the symmetry of a step from ``fold_in(key, SYMMETRY_KEY_SALT)``: its
own key, so the step's other draws are those of the same run without symmetry."""


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


def augment_batch(agent: SACAgent, key: jax.Array, shift_key: jax.Array,
                  next_shift_key: jax.Array, batch: Batch) -> Batch:
    """``batch`` under a random symmetry (``config.symmetry``, drawn from ``key``) and then, for
    images with ``config.augmentation``, random shifts of obs and of next obs (independent)."""
    config = agent.config
    if config.symmetry != "none":
        batch = apply_symmetry(config, jax.random.fold_in(key, SYMMETRY_KEY_SALT), batch)
    if agent.networks.is_image and config.augmentation:
        pad = shift_pad(config, agent.observation_shape)
        batch = batch.replace(
            observations=random_shift(shift_key, batch.observations, pad),
            next_observations=random_shift(next_shift_key, batch.next_observations, pad))
    return batch
