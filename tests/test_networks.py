"""Networks: NatureCNN shapes, uint8 scaling and bf16 compute; random-shift augmentation; the set encoder."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dodgerl.networks import (
    apply_image_symmetries,
    CriticEnsemble,
    MLPEncoder,
    NatureCNN,
    SetEncoder,
    apply_planar_symmetries,
    random_planar_symmetries,
    random_shift,
)


def test_nature_cnn_feature_shape_and_float32_params_under_bf16():
    images = jnp.zeros((2, 84, 84, 9), jnp.uint8)  # three stacked RGB frames
    for dtype in (jnp.float32, jnp.bfloat16):
        cnn = NatureCNN(features=32, dtype=dtype)
        params = cnn.init(jax.random.key(0), images)
        assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
        features = cnn.apply(params, images)
        assert features.shape == (2, 32) and features.dtype == jnp.float32
    # Nature torso at 84x84: 20x20x32 -> 9x9x64 -> 7x7x64 = 3136 inputs to the dense layer
    assert params["params"]["Dense_0"]["kernel"].shape == (3136, 32)


def test_nature_cnn_scales_uint8_to_unit_interval():
    cnn = NatureCNN(features=8)
    images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (3, 40, 40, 3)), jnp.uint8)
    params = cnn.init(jax.random.key(0), images)
    as_float = images.astype(jnp.float32) / 255.0
    conv = params["params"]["Conv_0"]
    first = jax.lax.conv_general_dilated(
        as_float, conv["kernel"], (4, 4), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    ) + conv["bias"]
    features, state = cnn.apply(params, images, capture_intermediates=True)
    np.testing.assert_allclose(state["intermediates"]["Conv_0"]["__call__"][0], first, rtol=1e-5,
                               atol=1e-5)
    assert features.shape == (3, 8)


def test_bf16_features_close_to_fp32():
    images = jnp.asarray(np.random.default_rng(1).integers(0, 256, (4, 48, 48, 3)), jnp.uint8)
    params = NatureCNN(features=16).init(jax.random.key(0), images)
    full = NatureCNN(features=16).apply(params, images)
    half = NatureCNN(features=16, dtype=jnp.bfloat16).apply(params, images)
    np.testing.assert_allclose(half, full, rtol=5e-2, atol=5e-2)


def test_mlp_encoder_without_layers_is_identity():
    x = jnp.arange(6.0).reshape(2, 3)
    assert MLPEncoder(()).init(jax.random.key(0), x) == {}
    np.testing.assert_array_equal(MLPEncoder(()).apply({}, x), x)


def test_random_shift_is_a_per_sample_translation_of_the_edge_padded_image():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, 12, 10, 3)).astype(np.uint8)
    pad = 2
    shifted = np.asarray(random_shift(jax.random.key(0), jnp.asarray(images), pad))
    assert shifted.shape == images.shape and shifted.dtype == np.uint8
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
    offsets = []
    for image, out in zip(padded, shifted):
        matches = [(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
                   if np.array_equal(image[dy : dy + 12, dx : dx + 10], out)]
        assert matches, "each output must be a crop of its own padded image"
        offsets.append(matches[0])
    assert len(set(offsets)) > 1, "shifts must differ between samples"
    np.testing.assert_array_equal(random_shift(jax.random.key(0), images, 0), images)


def test_space_to_depth_first_conv_equals_strided_conv_including_odd_sizes():
    """The exact rewrite of the 8x8 stride-4 conv: same params, same outputs as the plain conv,
    also where H, W are not multiples of 4 (the rows and columns a VALID conv ignores)."""
    from dodgerl.networks.encoders import StridedConv

    rng = np.random.default_rng(3)
    for shape in [(2, 40, 40, 3), (3, 42, 45, 6), (2, 84, 84, 3), (1, 2, 47, 39, 9)]:
        x = jnp.asarray(rng.normal(size=shape), jnp.float32)
        params = StridedConv(32, 8, 4).init(jax.random.key(0), x)
        kernel, bias = params["params"]["kernel"], params["params"]["bias"]
        assert kernel.shape == (8, 8, shape[-1], 32)
        flat = x.reshape(-1, *shape[-3:])
        expected = jax.lax.conv_general_dilated(
            flat, kernel, (4, 4), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")) + bias
        expected = np.asarray(expected).reshape(*shape[:-3], *expected.shape[1:])
        for s2d in (True, False):
            for gemm in (False, True):
                got = StridedConv(32, 8, 4, space_to_depth=s2d, gemm=gemm).apply(params, x)
                np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k, stride", [(8, 4), (4, 2), (3, 1), (3, 2), (1, 1)])
def test_conv_as_gemm_equals_the_convolution(k, stride):
    """im2col times the reshaped kernel is the VALID conv, for odd sizes and strides that do not
    divide the kernel too (the views are strided)."""
    from dodgerl.networks.encoders import conv_as_gemm

    rng = np.random.default_rng(k * 10 + stride)
    x = jnp.asarray(rng.normal(size=(2, 13, 11, 5)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(k, k, 5, 7)), jnp.float32)
    expected = jax.lax.conv_general_dilated(x, kernel, (stride, stride), "VALID",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))
    got = conv_as_gemm(x, kernel, stride)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("fast", [NatureCNN(features=16),
                                  NatureCNN(features=16, conv_gemm=True),
                                  NatureCNN(features=16, conv_gemm=True, space_to_depth=True)],
                         ids=["s2d", "gemm", "gemm_s2d"])
def test_nature_cnn_rewrites_same_params_features_and_gradients(fast):
    images = jnp.asarray(np.random.default_rng(4).integers(0, 256, (3, 50, 47, 6)), jnp.uint8)
    plain = NatureCNN(features=16, space_to_depth=False)
    params = fast.init(jax.random.key(0), images)
    jax.tree.map(np.testing.assert_array_equal, params, plain.init(jax.random.key(0), images))
    np.testing.assert_allclose(fast.apply(params, images), plain.apply(params, images),
                               rtol=1e-5, atol=1e-5)
    grads = [jax.grad(lambda p, m=m: jnp.sum(m.apply(p, images) ** 2))(params)
             for m in (fast, plain)]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), *grads)


def test_nature_cnn_layernorm_tanh_output_is_a_normalised_bounded_trunk():
    images = jnp.asarray(np.random.default_rng(1).integers(0, 256, (4, 40, 40, 3)), jnp.uint8)
    trunk = NatureCNN(features=32, output="layernorm_tanh")
    params = trunk.init(jax.random.key(0), images)
    assert set(params["params"]) == {"Conv_0", "Conv_1", "Conv_2", "Dense_0", "LayerNorm_0"}
    features, state = trunk.apply(params, images, capture_intermediates=True)
    dense = np.asarray(state["intermediates"]["Dense_0"]["__call__"][0])
    normalised = (dense - dense.mean(-1, keepdims=True)) / np.sqrt(dense.var(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(features, np.tanh(normalised), rtol=1e-4, atol=1e-5)
    assert np.all(np.abs(features) < 1.0) and np.any(features < 0)  # a ReLU torso is never < 0
    # the same conv and dense parameters, ReLU output: the two outputs differ only after Dense_0
    relu_params = {"params": {k: v for k, v in params["params"].items() if k != "LayerNorm_0"}}
    np.testing.assert_allclose(NatureCNN(features=32).apply(relu_params, images),
                               np.maximum(dense, 0.0), rtol=1e-5, atol=1e-6)


def test_nature_cnn_downsample_reads_the_block_averaged_image():
    # An image constant on 3x3 blocks pools to exactly its 85x85 source: the pooled network on
    # the large image is the plain network (same parameters) on the small one.
    rng = np.random.default_rng(0)
    small = jnp.asarray(rng.integers(0, 256, (2, 85, 85, 6)), jnp.uint8)
    large = jnp.repeat(jnp.repeat(small, 3, axis=1), 3, axis=2)
    large = jnp.pad(large, ((0, 0), (0, 1), (0, 1), (0, 0)), constant_values=255)  # 256: VALID drops it
    for gemm in (False, True):
        pooled, plain = NatureCNN(features=16, downsample=3, conv_gemm=gemm), NatureCNN(features=16, conv_gemm=gemm)
        params = pooled.init(jax.random.key(1), large)
        assert params["params"]["Dense_0"]["kernel"].shape == (3136, 16)  # 7x7x64, as at 84 px
        np.testing.assert_allclose(pooled.apply(params, large), plain.apply(params, small),
                                   rtol=1e-5, atol=1e-5)
    # and it is not the full-resolution network: pooling changes what the convs read
    unpooled = NatureCNN(features=16).init(jax.random.key(1), large)
    assert unpooled["params"]["Dense_0"]["kernel"].shape == (28 * 28 * 64, 16)


def test_nature_cnn_rejects_unknown_output():
    with np.testing.assert_raises_regex(ValueError, "output 'gelu'"):
        NatureCNN(features=8, output="gelu").init(jax.random.key(0), jnp.zeros((1, 40, 40, 3), jnp.uint8))


def test_critic_layer_norm_q_values_match_a_hand_computation():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(5, 7)).astype(np.float32)
    actions = rng.uniform(-1, 1, size=(5, 2)).astype(np.float32)
    ensemble = CriticEnsemble((8, 6), n_critics=3, layer_norm=True)
    params = ensemble.init(jax.random.key(0), features, actions)
    # Perturb the LayerNorm scale/bias away from their (1, 0) init so the check covers them.
    params = jax.tree_util.tree_map_with_path(
        lambda path, p: p + 0.1 * rng.normal(size=p.shape).astype(np.float32)
        if "LayerNorm" in jax.tree_util.keystr(path) else p,
        params,
    )
    q = np.asarray(ensemble.apply(params, features, actions))
    assert q.shape == (3, 5)

    mlp = params["params"]["Vmap_QHead_0"]["MLP_0"]
    x0 = np.concatenate([features, actions], axis=-1)
    for c in range(3):
        x = x0
        for i in range(2):
            dense, norm = mlp[f"Dense_{i}"], mlp[f"LayerNorm_{i}"]
            x = x @ np.asarray(dense["kernel"][c]) + np.asarray(dense["bias"][c])
            x = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-6)
            x = np.maximum(x * np.asarray(norm["scale"][c]) + np.asarray(norm["bias"][c]), 0.0)
        out = mlp["Dense_2"]
        expected = x @ np.asarray(out["kernel"][c])[:, 0] + np.asarray(out["bias"][c])[0]
        np.testing.assert_allclose(q[c], expected, rtol=1e-4, atol=1e-5)
    # Without layer_norm the same module has no LayerNorm parameters at all.
    plain = CriticEnsemble((8, 6), n_critics=3).init(jax.random.key(0), features, actions)
    assert "LayerNorm" not in str(jax.tree_util.tree_structure(plain))


def _set_observation(rng, n_present, n_slots=4, global_dims=3, item_dims=4):
    """A vector laid out as SetEncoder reads it: global features, then item rows whose last
    feature is the presence flag (absent rows all zero)."""
    glob = rng.normal(size=global_dims).astype(np.float32)
    items = np.zeros((n_slots, item_dims), np.float32)
    items[:n_present, :-1] = rng.normal(size=(n_present, item_dims - 1))
    items[:n_present, -1] = 1.0
    return glob, items


def test_set_encoder_is_invariant_to_item_order_and_ignores_absent_rows():
    rng = np.random.default_rng(0)
    enc = SetEncoder(global_dims=3, item_dims=4, features=(8, 5))
    glob, items = _set_observation(rng, n_present=3)
    obs = np.concatenate([glob, items.ravel()])
    params = enc.init(jax.random.key(0), obs[None])
    features = np.asarray(enc.apply(params, obs[None]))[0]
    assert features.shape == (3 + 2 * 5,)
    np.testing.assert_array_equal(features[:3], glob)  # the global features pass through

    # the same items in another order (the absent row moved too): the same features
    shuffled = np.concatenate([glob, items[[2, 3, 0, 1]].ravel()])
    np.testing.assert_allclose(np.asarray(enc.apply(params, shuffled[None]))[0], features, rtol=1e-6)

    # an absent row with non-zero junk in it (flag 0) contributes nothing
    junk = items.copy()
    junk[3, :-1] = 5.0
    np.testing.assert_array_equal(
        np.asarray(enc.apply(params, np.concatenate([glob, junk.ravel()])[None]))[0], features)

    # while a changed present item does change the features
    moved = items.copy()
    moved[0, 0] += 1.0
    assert not np.allclose(np.asarray(enc.apply(params, np.concatenate([glob, moved.ravel()])[None]))[0],
                           features)


def test_set_encoder_pools_by_sum_and_max_of_a_shared_item_mlp():
    rng = np.random.default_rng(1)
    enc = SetEncoder(global_dims=2, item_dims=3, features=(4,))
    glob, items = _set_observation(rng, n_present=2, n_slots=3, global_dims=2, item_dims=3)
    obs = np.concatenate([glob, items.ravel()])
    params = enc.init(jax.random.key(1), obs[None])
    w, b = (np.asarray(params["params"]["Dense_0"][k]) for k in ("kernel", "bias"))
    h = np.maximum(np.concatenate([items, np.tile(glob, (3, 1))], axis=1) @ w + b, 0.0)
    h = h * items[:, -1:]
    expected = np.concatenate([glob, h.sum(0), h.max(0)])
    np.testing.assert_allclose(np.asarray(enc.apply(params, obs[None]))[0], expected, rtol=1e-5,
                               atol=1e-6)


def test_planar_symmetries_draw_each_element_of_the_group_uniformly():
    n = 8192
    for group, size in (("none", 1), ("flip_x", 2), ("d4", 8)):
        swap, signs = random_planar_symmetries(jax.random.key(1), n, group)
        elements = [(bool(s), tuple(g)) for s, g in zip(np.asarray(swap), np.asarray(signs).tolist())]
        counts = {e: elements.count(e) for e in set(elements)}
        assert len(counts) == size, group
        assert all(abs(c / n - 1 / size) < 0.03 for c in counts.values()), counts
        if group == "flip_x":  # x -> -x only: never a swap, y never flipped
            assert not np.asarray(swap).any() and (np.asarray(signs)[:, 1] == 1).all()
    with pytest.raises(ValueError, match="c4"):
        random_planar_symmetries(jax.random.key(1), 4, "c4")


def test_apply_planar_symmetries_is_the_signed_permutation_matrix_on_each_pair():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 7)).astype(np.float32)
    swap, signs = random_planar_symmetries(jax.random.key(2), 8, "d4")
    out = np.asarray(apply_planar_symmetries(jnp.asarray(x), (0, 3), swap, signs))
    for row in range(8):
        m = np.diag(np.asarray(signs[row])) @ (np.array([[0, 1], [1, 0]]) if swap[row] else np.eye(2))
        for i in (0, 3):
            np.testing.assert_allclose(out[row, i:i + 2], m @ x[row, i:i + 2], rtol=1e-6)
        np.testing.assert_array_equal(out[row, [2, 5, 6]], x[row, [2, 5, 6]])  # not planar: kept
    # Rotating by 90 degrees four times is the identity; (x, y) -> (-y, x) is swap then flip x.
    quarter = (jnp.ones(8, bool), jnp.tile(jnp.array([[-1.0, 1.0]]), (8, 1)))
    y = jnp.asarray(x)
    for _ in range(4):
        y = apply_planar_symmetries(y, (0, 3), *quarter)
    np.testing.assert_allclose(np.asarray(y), x, rtol=1e-6)


def test_apply_image_symmetries_moves_each_pixel_as_the_matrix_moves_its_point():
    # Pixel (r, c) of an S x S image is the point (x, y) = (c - m, m - r), m = (S - 1) / 2
    # (columns along +x, rows along -y): after the element it must sit at M (x, y).
    size, rng = 9, np.random.default_rng(0)
    swap, signs = random_planar_symmetries(jax.random.key(4), 64, "d4")
    images = rng.integers(0, 256, (64, size, size, 6), dtype=np.uint8)  # two stacked RGB frames
    out = np.asarray(apply_image_symmetries(jnp.asarray(images), swap, signs))
    m = (size - 1) / 2
    seen = set()
    for b in range(64):
        mat = np.diag(np.asarray(signs[b])) @ (np.array([[0, 1], [1, 0]]) if swap[b] else np.eye(2))
        seen.add((bool(swap[b]), tuple(np.asarray(signs[b]))))
        for r in range(size):
            for c in range(size):
                x, y = mat @ np.array([c - m, m - r])
                np.testing.assert_array_equal(out[b, int(round(m - y)), int(round(x + m))], images[b, r, c])
    assert len(seen) == 8
    # 'flip_x' flips the columns of the samples drawn so and leaves the others as they were.
    swap, signs = random_planar_symmetries(jax.random.key(5), 64, "flip_x")
    out = np.asarray(apply_image_symmetries(jnp.asarray(images), swap, signs, "flip_x"))
    flipped = np.asarray(signs[:, 0] < 0)
    assert 0 < flipped.sum() < 64
    np.testing.assert_array_equal(out[flipped], images[flipped][:, :, ::-1])
    np.testing.assert_array_equal(out[~flipped], images[~flipped])
    with pytest.raises(ValueError, match="square"):
        apply_image_symmetries(jnp.zeros((2, 8, 9, 3), jnp.uint8), swap[:2], signs[:2])
    with pytest.raises(ValueError, match="c4"):
        apply_image_symmetries(jnp.zeros((2, 8, 8, 3), jnp.uint8), swap[:2], signs[:2], "c4")

