"""The shared model blocks of segjax/models/layers.py against numpy references, and the parameter names they give
(checkpoints and weight import rely on them)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax.models import layers
from tests.models.common import np_conv, np_resize, random_like


def _params(module, x, **kwargs):
  return jax.eval_shape(lambda x: module.init(jax.random.key(0), x, **kwargs), x)["params"]


def _np_batch_norm(x, mean, var, scale, bias, eps=1e-5):
  return (x - mean) / np.sqrt(var + eps) * scale + bias


# ---------------------------------------------------------------- input checks


def test_check_images_names_the_model_and_the_shape():
  layers.check_images(jnp.zeros((1, 4, 4, 3)), "Net")
  with pytest.raises(ValueError, match=r"Net expects images \[B, H, W, C\], got shape \(4, 4, 3\)"):
    layers.check_images(jnp.zeros((4, 4, 3)), "Net")


def test_check_divisible_names_the_divisor_the_reason_and_the_size():
  layers.check_divisible(jnp.zeros((1, 16, 24, 3)), "Net", 8)
  with pytest.raises(ValueError, match=r"Net needs height and width divisible by 8, got 16x20: crop or pad"):
    layers.check_divisible(jnp.zeros((1, 16, 20, 3)), "Net", 8)
  with pytest.raises(ValueError, match=r"divisible by 32 \(five 2x2 poolings\), got 40x32"):
    layers.check_divisible(jnp.zeros((1, 40, 32, 3)), "Net", 32, " (five 2x2 poolings)")


# ---------------------------------------------------------------- pooling and crops


def _np_max_pool_2x2(x):
  b, h, w, c = x.shape
  out = np.empty((b, h // 2, w // 2, c), x.dtype)
  for i in range(h // 2):
    for j in range(w // 2):
      out[:, i, j] = x[:, 2 * i:2 * i + 2, 2 * j:2 * j + 2].max(axis=(1, 2))
  return out


def test_max_pool_equals_flax_max_pool():
  x = jax.random.normal(jax.random.key(0), (2, 8, 6, 3))
  np.testing.assert_array_equal(layers.max_pool_2x2(x), nn.max_pool(x, (2, 2), strides=(2, 2)))


def test_max_pool_2x2_matches_a_numpy_loop_and_has_correct_gradients():
  x = np.random.default_rng(0).normal(size=(2, 6, 10, 3)).astype(np.float32)
  np.testing.assert_array_equal(jax.jit(layers.max_pool_2x2)(x), _np_max_pool_2x2(x))
  # The gradient of <w, pool(x)> is w routed to each window's maximum (unique for random values), 0 elsewhere.
  w = np.random.default_rng(1).normal(size=(2, 3, 5, 3)).astype(np.float32)
  grad = jax.jit(jax.grad(lambda x: jnp.sum(w * layers.max_pool_2x2(x))))(x)
  ref = np.zeros_like(x)
  for b in range(2):
    for i in range(3):
      for j in range(5):
        for c in range(3):
          window = x[b, 2 * i:2 * i + 2, 2 * j:2 * j + 2, c]
          di, dj = np.unravel_index(window.argmax(), (2, 2))
          ref[b, 2 * i + di, 2 * j + dj, c] = w[b, i, j, c]
  np.testing.assert_array_equal(grad, ref)


def test_center_crop_helper():
  x = np.arange(2 * 9 * 8 * 1).reshape(2, 9, 8, 1)
  np.testing.assert_array_equal(layers.center_crop(jnp.asarray(x), (4, 4)), x[:, 2:6, 2:6, :])
  # An odd margin drops the extra row/column at the bottom/right.
  np.testing.assert_array_equal(layers.center_crop(jnp.asarray(x), (4, 3)), x[:, 2:6, 2:5, :])
  with pytest.raises(ValueError, match="centre-crop"):
    layers.center_crop(jnp.asarray(x), (10, 4))


def test_crop_is_the_window_at_the_offset():
  x = np.random.default_rng(1).normal(size=(2, 9, 11, 3)).astype(np.float32)
  np.testing.assert_array_equal(layers.crop(jnp.asarray(x), 2, 5, 4, 6), x[:, 2:6, 5:11])
  for top, left, h, w in ((6, 0, 4, 4), (0, 8, 4, 4), (-1, 0, 2, 2)):
    with pytest.raises(ValueError, match="cannot crop"):
      layers.crop(jnp.asarray(x), top, left, h, w)


# ---------------------------------------------------------------- upsampling


@pytest.mark.parametrize("centre,size", [(0.0, (33, 40)), (3.5, (37, 44))])
def test_upsample_aligned_matches_numpy(centre, size):
  x = np.random.default_rng(0).normal(size=(1, 5, 6, 2))
  y = layers.upsample_aligned(jnp.asarray(x, jnp.float32), size, 8, centre)
  np.testing.assert_allclose(y[0], np_resize(x[0], size, 8, centre), rtol=1e-5, atol=1e-5)


def test_upsample_aligned_rejects_other_centres_and_sizes_it_cannot_cover():
  x = jnp.zeros((1, 5, 6, 2))
  with pytest.raises(ValueError, match="centre 0 or"):
    layers.upsample_aligned(x, (33, 41), 8, 1.0)
  with pytest.raises(ValueError, match="cover 33x41 pixels, not 34x41"):
    layers.upsample_aligned(x, (34, 41), 8, 0.0)


# ---------------------------------------------------------------- convolution blocks


def test_symmetric_padding_is_pytorchs_for_strided_dilated_convolutions():
  # PyTorch's Conv2d(k, stride s, padding p, dilation d): the stride-1 convolution with padding p, subsampled.
  x = np.random.default_rng(2).normal(size=(1, 9, 8, 3)).astype(np.float32)
  kernel = np.random.default_rng(3).normal(size=(3, 3, 3, 4)).astype(np.float32)
  assert layers.symmetric_padding(3, 2) == ((2, 2), (2, 2)) and layers.symmetric_padding(7) == ((3, 3), (3, 3))
  y = jax.lax.conv_general_dilated(x, kernel, (2, 2), layers.symmetric_padding(3, 2), rhs_dilation=(2, 2),
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  ref = np_conv(x[0], kernel, 0.0, dilation=2, pad=2)[::2, ::2]
  np.testing.assert_allclose(y[0], ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
def test_conv_block_without_norm_is_two_convolutions_with_relu(padding):
  _, block = layers.conv_and_block(padding, batch_norm=False, dtype=jnp.float32, param_dtype=jnp.float32)
  model = block(5)
  x = np.random.default_rng(4).normal(size=(1, 10, 9, 3)).astype(np.float32)
  params = random_like(_params(model, x, train=False), seed=5)
  # Flax's auto-names: checkpoints of the U-Nets and the small FCNs hold exactly these.
  assert jax.tree.map(np.shape, params) == {"Conv_0": {"kernel": (3, 3, 3, 5), "bias": (5,)},
                                            "Conv_1": {"kernel": (3, 3, 5, 5), "bias": (5,)}}
  y = model.apply({"params": params}, x, train=False)
  pad = 1 if padding == "SAME" else 0
  p = jax.tree.map(np.asarray, params)
  ref = np.maximum(np_conv(x[0], p["Conv_0"]["kernel"], p["Conv_0"]["bias"], dilation=1, pad=pad), 0)
  ref = np.maximum(np_conv(ref, p["Conv_1"]["kernel"], p["Conv_1"]["bias"], dilation=1, pad=pad), 0)
  np.testing.assert_allclose(y[0], ref, rtol=1e-4, atol=1e-5)


def test_conv_block_with_batch_norm_matches_numpy_in_both_modes():
  _, block = layers.conv_and_block("SAME", batch_norm=True, dtype=jnp.float32, param_dtype=jnp.float32)
  model = block(4)
  x = np.random.default_rng(6).normal(size=(2, 6, 7, 3)).astype(np.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
  assert set(variables["params"]) == {"Conv_0", "BatchNorm_0", "Conv_1", "BatchNorm_1"}
  assert "bias" not in variables["params"]["Conv_0"]  # BatchNorm's shift replaces the convolution bias
  rng = np.random.default_rng(7)
  params = {name: {k: jnp.asarray(rng.uniform(0.5, 1.5, v.shape) if k == "scale" else
                                  rng.normal(0, 0.3, v.shape), jnp.float32) for k, v in layer.items()}
            for name, layer in variables["params"].items()}
  stats = {name: {"mean": jnp.asarray(rng.normal(0, 0.3, s["mean"].shape), jnp.float32),
                  "var": jnp.asarray(rng.uniform(0.5, 1.5, s["var"].shape), jnp.float32)}
           for name, s in variables["batch_stats"].items()}
  p = jax.tree.map(np.asarray, params)
  s = jax.tree.map(np.asarray, stats)

  y = model.apply({"params": params, "batch_stats": stats}, x, train=False)
  ref = x
  for i in range(2):
    ref = np.stack([np_conv(r, p[f"Conv_{i}"]["kernel"], 0.0, dilation=1, pad=1) for r in ref])
    bn = p[f"BatchNorm_{i}"]
    ref = np.maximum(_np_batch_norm(ref, s[f"BatchNorm_{i}"]["mean"], s[f"BatchNorm_{i}"]["var"], bn["scale"],
                                    bn["bias"]), 0)
  np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)

  # Training: batch statistics (biased variance, epsilon 1e-5), running averages with momentum 0.9.
  y, new = model.apply({"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"])
  ref, batch_means, batch_vars = x, [], []
  for i in range(2):
    ref = np.stack([np_conv(r, p[f"Conv_{i}"]["kernel"], 0.0, dilation=1, pad=1) for r in ref])
    mean, var = ref.mean(axis=(0, 1, 2)), ref.var(axis=(0, 1, 2))
    batch_means.append(mean)
    batch_vars.append(var)
    bn = p[f"BatchNorm_{i}"]
    ref = np.maximum(_np_batch_norm(ref, mean, var, bn["scale"], bn["bias"]), 0)
  np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)
  for i in range(2):
    got = new["batch_stats"][f"BatchNorm_{i}"]
    np.testing.assert_allclose(got["mean"], 0.9 * s[f"BatchNorm_{i}"]["mean"] + 0.1 * batch_means[i], rtol=1e-4,
                               atol=1e-5)
    # Flax keeps the biased batch variance in the running average (PyTorch would use the unbiased one).
    np.testing.assert_allclose(got["var"], 0.9 * s[f"BatchNorm_{i}"]["var"] + 0.1 * batch_vars[i], rtol=1e-4,
                               atol=1e-5)


def test_batch_norm_partial_settings():
  norm = layers.batch_norm_partial(jnp.bfloat16, jnp.float32, train=True)
  assert norm.keywords == {"momentum": 0.9, "epsilon": 1e-5, "dtype": jnp.bfloat16, "param_dtype": jnp.float32,
                           "use_running_average": False}
  assert "use_running_average" not in layers.batch_norm_partial(jnp.float32, jnp.float32).keywords


def test_classifier_is_a_named_1x1_convolution():
  class Head(nn.Module):
    @nn.compact
    def __call__(self, x):
      return layers.classifier(3, jnp.float32, jnp.float32)(x)

  x = np.random.default_rng(8).normal(size=(2, 4, 5, 6)).astype(np.float32)
  params = random_like(_params(Head(), x), seed=9)
  assert jax.tree.map(np.shape, params) == {"classifier": {"kernel": (1, 1, 6, 3), "bias": (3,)}}
  p = jax.tree.map(np.asarray, params["classifier"])
  np.testing.assert_allclose(Head().apply({"params": params}, x), x @ p["kernel"][0, 0] + p["bias"], rtol=1e-5,
                             atol=1e-5)


@pytest.mark.parametrize("padding", [None, "VALID"])
def test_fc_layers_are_named_convolutions_with_relu_and_dropout(padding):
  spec = (("fc6", 3, 2), ("fc7", 1, 1))

  class Head(nn.Module):
    @nn.compact
    def __call__(self, x, *, train):
      return layers.fc_layers(x, spec, 4, train=train, dropout_rate=0.5, kernel_init=nn.initializers.he_normal(),
                              padding=padding)

  x = np.random.default_rng(10).normal(size=(1, 9, 8, 3)).astype(np.float32)
  params = random_like(_params(Head(), x, train=False), seed=11)
  assert jax.tree.map(np.shape, params) == {"fc6": {"kernel": (3, 3, 3, 4), "bias": (4,)},
                                            "fc7": {"kernel": (1, 1, 4, 4), "bias": (4,)}}
  p = jax.tree.map(np.asarray, params)
  ref = np.maximum(np_conv(x[0], **p["fc6"], dilation=2, pad=2 if padding is None else 0), 0)
  ref = np.maximum(np_conv(ref, **p["fc7"], dilation=1, pad=0), 0)
  y = Head().apply({"params": params}, x, train=False)
  np.testing.assert_allclose(y[0], ref, rtol=1e-4, atol=1e-5)
  # Training: each ReLU output is dropped (0) or scaled by 1 / (1 - 0.5), and fc7 sees the dropped fc6.
  _, state = Head().apply({"params": params}, x, train=True, rngs={"dropout": jax.random.key(0)},
                          capture_intermediates=True, mutable=["intermediates"])
  inter = jax.tree.map(np.asarray, state["intermediates"])
  h = x[0]
  for i, (name, _, dilation) in enumerate(spec):
    pad = dilation * (p[name]["kernel"].shape[0] - 1) // 2 if padding is None else 0
    relu = np.maximum(np_conv(h, **p[name], dilation=dilation, pad=pad), 0)
    dropped = inter[f"Dropout_{i}"]["__call__"][0][0]
    assert np.all(np.isclose(dropped, 0) | np.isclose(dropped, 2 * relu, rtol=1e-4, atol=1e-5))
    assert 0 < np.count_nonzero(dropped) < np.count_nonzero(relu)
    h = dropped
