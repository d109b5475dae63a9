"""Observation encoders: an MLP or a set encoder for state vectors, the Nature-DQN CNN for uint8 images."""

from collections.abc import Sequence

import flax.linen as nn
import jax
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


class SetEncoder(nn.Module):
    """Permutation-invariant encoder (Deep Sets, Zaheer et al. 2017) for a state vector laid out
    as ``global_dims`` global features followed by equal items of ``item_dims`` features each, the
    last feature of an item its presence flag (1 present, 0 an all-zero padding row).

    Every item, concatenated with the global features, goes through one shared ReLU MLP
    (``features``); the outputs of present items are pooled by sum and by max, and the encoder
    returns ``[global, sum, max]`` (``global_dims + 2 * features[-1]`` features). Each item is read
    by the same weights whatever its slot, so what is learnt about a projectile in slot 0 holds
    in slot 7, and re-sorting the items changes nothing.

    The dodge env's vector observation is this layout with ``global_dims=5, item_dims=6`` (player
    state, then the 10 nearest projectiles). Behaviour cloning of a lookahead planner on level 2
    (``benchmarks/encoder_probe.py``: 100K states, same data and steps) reaches a mean return of
    822 with this encoder against 158 with the identity encoder and the same MLP head.
    """

    global_dims: int
    item_dims: int
    features: Sequence[int] = (64, 64)

    @nn.compact
    def __call__(self, observations: jnp.ndarray) -> jnp.ndarray:
        x = observations.astype(jnp.float32)
        g, m = self.global_dims, self.item_dims
        glob = x[..., :g]
        items = x[..., g:].reshape(*x.shape[:-1], (x.shape[-1] - g) // m, m)
        present = items[..., -1:]
        h = jnp.concatenate([items, jnp.broadcast_to(glob[..., None, :], (*items.shape[:-1], g))], -1)
        for width in self.features:
            h = nn.relu(nn.Dense(width)(h))
        h = h * present  # ReLU outputs are >= 0, so absent items (0) never win the max
        return jnp.concatenate([glob, h.sum(axis=-2), h.max(axis=-2)], axis=-1)


NATURE_CNN_OUTPUTS = ("relu", "layernorm_tanh")
"""What may follow NatureCNN's dense layer (``NatureCNN.output``)."""
NATURE_CNN_RETURNS = ("features", "torso", "both")
"""What NatureCNN returns (``NatureCNN.returns``)."""


def trunk_output(x: jnp.ndarray, output: str, layer_norm: nn.Module) -> jnp.ndarray:
    """What follows a trunk's dense layer: ReLU, or ``layer_norm`` then tanh (in float32)."""
    if output == "layernorm_tanh":
        return jnp.tanh(layer_norm(x.astype(jnp.float32)))
    return nn.relu(x).astype(jnp.float32)


def nature_cnn_min_size() -> int:
    """Smallest square image side the three VALID convolutions accept (36 pixels)."""
    return 36


def space_to_depth(x: jnp.ndarray, block: int) -> jnp.ndarray:
    """(..., H, W, C) -> (..., H/b, W/b, b*b*C), channel index (dy*b + dx)*C + c.

    H and W must be multiples of ``block``.
    """
    *lead, h, w, c = x.shape
    x = x.reshape(*lead, h // block, block, w // block, block, c)
    x = jnp.moveaxis(x, -4, -3)  # (..., H/b, W/b, b(dy), b(dx), C)
    return x.reshape(*lead, h // block, w // block, block * block * c)


def space_to_depth_kernel(kernel: jnp.ndarray, block: int) -> jnp.ndarray:
    """An HWIO (k, k, C, O) kernel with k a multiple of ``block`` -> (k/b, k/b, b*b*C, O), the
    kernel of the stride-1 conv over ``space_to_depth(x, block)`` equal to the stride-``block``
    conv of ``kernel`` over ``x`` (channel order as ``space_to_depth``)."""
    kh, kw, c, o = kernel.shape
    kernel = kernel.reshape(kh // block, block, kw // block, block, c, o)
    kernel = jnp.moveaxis(kernel, 2, 1)  # (kh/b, kw/b, b(dy), b(dx), C, O)
    return kernel.reshape(kh // block, kw // block, block * block * c, o)


def conv_as_gemm(x: jnp.ndarray, kernel: jnp.ndarray, stride: int) -> jnp.ndarray:
    """A VALID conv of an HWIO ``kernel`` (k, k, C, O) over NHWC ``x`` with stride ``stride``,
    written as one matrix product: im2col patches in the kernel's own (dy, dx, c) order times
    ``kernel.reshape(k*k*C, O)``. The same function as ``lax.conv_general_dilated`` up to float
    summation order, computed by a GEMM kernel instead of a convolution kernel.

    The patches need no transpose of the image: its columns are grouped in blocks of ``stride``
    (a reshape of NHWC, free), so that the k columns an output reads from one image row are
    ``ceil(k / stride)`` consecutive blocks, each ``stride * C`` contiguous values. A patch is
    then, for each kernel row dy, those blocks of image row ``stride * i + dy``: ``k *
    ceil(k / stride)`` strided views concatenated on the channels (the last block of a row cut to
    the kernel's width when ``stride`` does not divide ``k``). XLA fuses the views, the
    concatenation and the elementwise producer (the image's conversion and scaling) into one
    kernel that writes the patches once (docs/perf_notes.md, v16: the space-to-depth form before
    it made XLA transpose the patches to the kernel's order, a second pass over them)."""
    k, _, c, o = kernel.shape
    n, h, w, _ = x.shape
    h_out, w_out = (h - k) // stride + 1, (w - k) // stride + 1
    blocks = -(-k // stride)  # column blocks a patch row spans
    width = stride * (w_out - 1 + blocks)  # columns those blocks cover
    if width > w:  # stride does not divide k: the last block runs past the image; never read
        x = jnp.pad(x, ((0, 0), (0, 0), (0, width - w), (0, 0)))
    x = x[:, :, :width].reshape(n, h, width // stride, stride * c)
    views = [x[:, dy: dy + stride * (h_out - 1) + 1: stride, b: b + w_out,
               : min(stride, k - stride * b) * c]
             for dy in range(k) for b in range(blocks)]
    patches = views[0] if len(views) == 1 else jnp.concatenate(views, axis=-1)
    y = patches.reshape(n * h_out * w_out, k * k * c) @ kernel.reshape(k * k * c, o)
    return y.reshape(n, h_out, w_out, o)


class StridedConv(nn.Module):
    """A VALID ``kernel x kernel`` conv with stride ``stride``, with the parameters of ``nn.Conv``
    (``kernel`` (k, k, C, O) HWIO, ``bias`` (O,), same init).

    With ``space_to_depth`` it computes the same function exactly (up to float summation order)
    as a stride-1 conv with a (k/s, k/s, s*s*C, O) kernel over the space-to-depth image: rows and
    columns that the strided VALID conv never reads (beyond ``stride * (out + k/s - 1)``) are
    cropped first. NatureCNN's first layer (8x8 stride 4 over 3 channels) is badly shaped for
    cuDNN (3 input channels, stride 4); as a 2x2 stride-1 conv over 48 channels it is a plain
    implicit GEMM. See docs/perf_notes.md. With ``gemm`` the (rewritten) conv is computed by
    ``conv_as_gemm``.
    """

    features: int
    kernel: int
    stride: int
    dtype: jnp.dtype = jnp.float32
    space_to_depth: bool = True
    gemm: bool = False

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        k, s = self.kernel, self.stride
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (k, k, x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
        x, kernel, bias = (a.astype(self.dtype) for a in (x, kernel, bias))
        lead = x.shape[:-3]
        x = x.reshape(-1, *x.shape[-3:])
        if self.space_to_depth and k % s == 0:
            h_out, w_out = ((n - k) // s + 1 for n in x.shape[1:3])
            blocks = k // s
            x = x[:, : s * (h_out + blocks - 1), : s * (w_out + blocks - 1)]
            x = space_to_depth(x, s)
            kernel, s = space_to_depth_kernel(kernel, s), 1
        if self.gemm:
            y = conv_as_gemm(x, kernel, s)
        else:
            y = jax.lax.conv_general_dilated(
                x, kernel, (s, s), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
        y = y + bias
        return y.reshape(*lead, *y.shape[1:])


class NatureCNN(nn.Module):
    """Mnih et al. (2015) torso: 8x8/4 32ch, 4x4/2 64ch, 3x3/1 64ch, dense ``features`` + ReLU.

    Takes uint8 images (..., H, W, C) and scales them to [0, 1] on the device. ``dtype`` is the
    compute dtype (bfloat16 halves the memory traffic on GPUs); parameters stay float32 and the
    features come out float32 so the heads and losses never see bf16. ``dense_dtype`` (default:
    ``dtype``) is the compute dtype of the final dense layer alone.

    With ``conv_gemm`` every conv is a matrix product over im2col patches (``conv_as_gemm``),
    else a cuDNN-style convolution. ``space_to_depth`` rewrites the strided convs exactly as
    stride-1 convs over space-to-depth images (``StridedConv``): as convolutions the first one
    only (8x8/4 over 3 channels is badly shaped for cuDNN), as GEMMs the first two (the form
    before ``conv_as_gemm`` blocked the columns itself; slower, kept to measure). None (default):
    the first conv's rewrite for convolutions, none for GEMMs. The parameters (``Conv_0``..
    ``Conv_2``, ``Dense_0``) and their layout are the same either way.

    ``downsample`` k > 1 first average-pools the image over k x k blocks (stride k, VALID),
    in float32: the convs then read an image of side ``side // k``.

    ``output`` is what follows the dense layer: ``"relu"`` (Nature-DQN, SB3's NatureCNN) or
    ``"layernorm_tanh"`` (LayerNorm then tanh, as the trunk of SAC-AE / DrQ's encoder: bounded,
    normalised features for the heads; computed in float32).

    ``returns``: ``"features"`` (the dense layer's output), ``"torso"`` (the flattened output of
    the last conv, float32; the dense layer's parameters are then unused) or ``"both"``
    (features, torso). The parameters are the same for all three.
    """

    features: int = 512
    dtype: jnp.dtype = jnp.float32
    dense_dtype: jnp.dtype | None = None
    space_to_depth: bool | None = None
    output: str = "relu"
    conv_gemm: bool = False
    downsample: int = 1
    returns: str = "features"

    @nn.compact
    def __call__(self, observations: jnp.ndarray) -> jnp.ndarray:
        if self.output not in NATURE_CNN_OUTPUTS:
            raise ValueError(f"NatureCNN output {self.output!r}: must be one of {NATURE_CNN_OUTPUTS}")
        if self.returns not in NATURE_CNN_RETURNS:
            raise ValueError(f"NatureCNN returns {self.returns!r}: must be one of {NATURE_CNN_RETURNS}")
        s2d = not self.conv_gemm if self.space_to_depth is None else self.space_to_depth
        if self.downsample > 1:
            k = self.downsample
            x = observations.astype(jnp.float32) * (1.0 / 255.0)
            lead = x.shape[:-3]
            x = nn.avg_pool(x.reshape(-1, *x.shape[-3:]), (k, k), strides=(k, k))
            x = x.reshape(*lead, *x.shape[1:]).astype(self.dtype)
        else:
            x = observations.astype(self.dtype) * jnp.asarray(1.0 / 255.0, self.dtype)
        x = StridedConv(32, 8, 4, dtype=self.dtype, space_to_depth=s2d,
                        gemm=self.conv_gemm, name="Conv_0")(x)
        x = nn.relu(x)
        for i, (channels, kernel, stride) in enumerate(((64, 4, 2), (64, 3, 1)), start=1):
            # The later convs space-to-depth only as GEMMs (as convolutions cuDNN takes them
            # as they are: the rewrite was measured for the first conv only).
            x = StridedConv(channels, kernel, stride, dtype=self.dtype,
                            space_to_depth=s2d and self.conv_gemm,
                            gemm=self.conv_gemm, name=f"Conv_{i}")(x)
            x = nn.relu(x)
        torso = x.reshape(*x.shape[:-3], -1)
        if self.returns == "torso":
            return torso.astype(jnp.float32)
        dense_dtype = self.dtype if self.dense_dtype is None else self.dense_dtype
        x = nn.Dense(self.features, dtype=dense_dtype, param_dtype=jnp.float32,
                     name="Dense_0")(torso.astype(dense_dtype))
        features = trunk_output(x, self.output, nn.LayerNorm(name="LayerNorm_0"))
        return (features, torso.astype(jnp.float32)) if self.returns == "both" else features


def precast_params(encoder: nn.Module, params: dict) -> dict:
    """``params`` with every leaf that ``encoder`` converts to a lower compute precision before
    use already converted (the others unchanged). Applying the encoder to the result computes
    exactly what it computes from ``params``: its own conversions become no-ops. The SAC update
    carries these copies between its steps, where the conversion fuses into the optimiser's
    write of the parameters instead of re-reading them (docs/perf_notes.md, v12).

    NatureCNN converts its convolutions' kernels and biases to ``dtype`` and the dense layer's to
    ``dense_dtype`` (LayerNorm stays float32); MLPEncoder computes in float32 throughout.
    """
    if not isinstance(encoder, NatureCNN):
        return params
    dense_dtype = encoder.dtype if encoder.dense_dtype is None else encoder.dense_dtype
    dtypes = {"Conv_0": encoder.dtype, "Conv_1": encoder.dtype, "Conv_2": encoder.dtype,
              "Dense_0": dense_dtype}
    return {
        name: jax.tree.map(lambda p, d=dtypes.get(name): p if d is None else p.astype(d), layer)
        for name, layer in params.items()
    }
