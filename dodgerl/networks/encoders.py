"""Observation encoders: an MLP for state vectors and the Nature-DQN CNN for uint8 images."""

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp


class MLPEncoder(nn.Module):
    """ReLU MLP over a float state vector. With no layers it is the identity (plain SAC from state)."""

    features: Sequence[int] = ()

    @nn.compact
    def __call__(self, observations: jnp.ndarray) -> jnp.ndarray:
        x = observations.astype(jnp.float32)
        for width in self.features:
            x = nn.relu(nn.Dense(width)(x))
        return x


def nature_cnn_min_size() -> int:
    """Smallest square image side the three VALID convolutions accept (36 pixels)."""
    return 36


class NatureCNN(nn.Module):
    """Mnih et al. (2015) torso: 8x8/4 32ch, 4x4/2 64ch, 3x3/1 64ch, dense ``features`` + ReLU.

    Takes uint8 images (..., H, W, C) and scales them to [0, 1] on the device. ``dtype`` is the
    compute dtype (bfloat16 halves the memory traffic on GPUs); parameters stay float32 and the
    features come out float32 so the heads and losses never see bf16.
    """

    features: int = 512
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, observations: jnp.ndarray) -> jnp.ndarray:
        x = observations.astype(self.dtype) * jnp.asarray(1.0 / 255.0, self.dtype)
        for channels, kernel, stride in ((32, 8, 4), (64, 4, 2), (64, 3, 1)):
            x = nn.Conv(
                channels,
                (kernel, kernel),
                strides=(stride, stride),
                padding="VALID",
                dtype=self.dtype,
                param_dtype=jnp.float32,
            )(x)
            x = nn.relu(x)
        x = x.reshape(*x.shape[:-3], -1)
        x = nn.Dense(self.features, dtype=self.dtype, param_dtype=jnp.float32)(x)
        return nn.relu(x).astype(jnp.float32)
