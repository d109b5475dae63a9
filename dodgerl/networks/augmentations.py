"""Augmentation on the device: DrQ's random shift of images (edge-pad, then a random crop per
sample); symmetries of the square arena, for vector transitions and for images."""

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


# Symmetry augmentation of transitions. A planar symmetry g of the square arena is a 2x2
# signed permutation matrix: optionally swap x and y, then flip the sign of each. The 8 of them
# are the dihedral group D4 (the square's 4 rotations and 4 reflections); {identity, x -> -x} is
# the mirror group.
SYMMETRY_GROUPS = ("none", "flip_x", "d4")


def random_planar_symmetries(key: jax.Array, batch: int, group: str) -> tuple[jnp.ndarray, jnp.ndarray]:
    """One uniformly drawn element of ``group`` per sample: ``(swap, signs)``, ``swap`` bool (B,)
    and ``signs`` float32 (B, 2); the element maps (x, y) to signs * (y, x if swap else x, y)."""
    if group not in SYMMETRY_GROUPS:
        raise ValueError(f"unknown symmetry group {group!r}; known: {SYMMETRY_GROUPS}")
    bits = jax.random.bernoulli(key, 0.5, (batch, 3))
    off = jnp.zeros((batch,), bool)
    swap = bits[:, 0] if group == "d4" else off
    flip_x = bits[:, 1] if group != "none" else off
    flip_y = bits[:, 2] if group == "d4" else off
    signs = jnp.where(jnp.stack([flip_x, flip_y], axis=1), -1.0, 1.0).astype(jnp.float32)
    return swap, signs


def apply_planar_symmetries(x: jnp.ndarray, xy: tuple[int, ...], swap: jnp.ndarray,
                            signs: jnp.ndarray) -> jnp.ndarray:
    """Apply each sample's element to the planar vectors of ``x`` (B, D): ``xy`` holds the index
    of each vector's x component, its y component follows at index + 1; the other features are
    left alone (they must be invariant: distances, flags, timers)."""
    x = jnp.asarray(x)
    if not xy:
        return x
    ix = jnp.asarray(xy)
    vx, vy = x[:, ix], x[:, ix + 1]
    s = swap[:, None]
    new_x = jnp.where(s, vy, vx) * signs[:, 0:1]
    new_y = jnp.where(s, vx, vy) * signs[:, 1:2]
    return x.at[:, ix].set(new_x.astype(x.dtype)).at[:, ix + 1].set(new_y.astype(x.dtype))


def apply_image_symmetries(images: jnp.ndarray, swap: jnp.ndarray, signs: jnp.ndarray,
                           group: str = "d4") -> jnp.ndarray:
    """Apply each sample's element (as :func:`random_planar_symmetries` draws it) to a batch of
    square images (B, S, S, C) whose columns run along +x and rows along -y (the dodge
    rasterizer's convention, ``dodgerl.envs.rasterizer.world_to_pixel``): the image of the
    transformed world. Swapping x and y is the anti-transpose (pixel (r, c) -> (S-1-c, S-1-r));
    x -> -x flips the columns, y -> -y the rows. ``group`` leaves out the selects its elements
    never use (no swap or row flip for 'flip_x'). Any number of stacked frames on the channel
    axis: each is transformed alike."""
    if images.ndim != 4 or images.shape[1] != images.shape[2]:
        raise ValueError(f"image symmetries need square images (B, S, S, C), got {images.shape}")
    if group not in SYMMETRY_GROUPS:
        raise ValueError(f"unknown symmetry group {group!r}; known: {SYMMETRY_GROUPS}")
    if group == "none":
        return images
    def per_sample(mask: jnp.ndarray) -> jnp.ndarray:
        return mask[:, None, None, None]
    if group == "d4":
        anti = jnp.flip(jnp.swapaxes(images, 1, 2), axis=(1, 2))
        images = jnp.where(per_sample(swap), anti, images)
    images = jnp.where(per_sample(signs[:, 0] < 0), jnp.flip(images, axis=2), images)
    if group == "d4":
        images = jnp.where(per_sample(signs[:, 1] < 0), jnp.flip(images, axis=1), images)
    return images

