"""Image augmentation on the device: DrQ's random shift (edge-pad, then a random crop per sample)."""

import jax
import jax.numpy as jnp


def random_shift(key: jax.Array, images: jnp.ndarray, pad: int) -> jnp.ndarray:
    """Shift each image of a batch (B, H, W, C) by its own integer offset in [-pad, pad].

    Pads by replicating the border (as DrQ), then crops an H x W window per sample; dtype and
    shape are preserved, so it runs on uint8 before scaling.
    """
    if pad <= 0:
        return images
    batch, height, width, channels = images.shape
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
    offsets = jax.random.randint(key, (batch, 2), 0, 2 * pad + 1)

    def crop(image: jnp.ndarray, offset: jnp.ndarray) -> jnp.ndarray:
        return jax.lax.dynamic_slice(
            image, (offset[0], offset[1], 0), (height, width, channels)
        )

    return jax.vmap(crop)(padded, offsets)
