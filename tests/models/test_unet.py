"""U-Net: the same-padded network (shapes, dtypes, parameter counts against an independent formula, the matmul
up-convolution) and the paper's unpadded original (Ronneberger et al. 2015, Fig. 1: valid sizes, centre-cropped
skips against a numpy reference forward pass)."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from segjax.models import build_model, unet
from segjax.models.unet import UNetValid
from tests.models.common import KEYS, abstract_init, conv_block_param_count, count_params


def _params(model, shape):
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False))["params"]


def unet_param_count(in_ch, classes, depth, base, bn, transpose=True):
  """Parameter count of the U-Net written out layer by layer from the paper's description."""
  def conv(cin, cout, k, bias=True):
    return k * k * cin * cout + (cout if bias else 0)

  def block(cin, cout):
    return conv_block_param_count(cin, cout, bn)

  total, cin = 0, in_ch
  for level in range(depth + 1):
    total += block(cin, base * 2**level)
    cin = base * 2**level
  for level in reversed(range(depth)):
    f = base * 2**level
    total += conv(2 * f, f, 2) if transpose else conv(2 * f, f, 3)  # up-conv halves the channels
    total += block(2 * f, f)
  return total + conv(base, classes, 1)


def test_paper_unet_has_31_0m_parameters():
  # Ronneberger et al. 2015, Fig. 1: 1 input channel, 2 classes, 64 base features, 4 poolings, no BN.
  # The figure of "31.0 M" is the one quoted by the paper's successors (e.g. the Pytorch-UNet project
  # reports 31,037,698 for the BN variant with 3 input channels); our formula gives both exactly.
  model = build_model("unet", 2, depth=4, base_features=64, batch_norm=False)
  n = count_params(_params(model, (1, 32, 32, 1)))
  assert n == unet_param_count(1, 2, 4, 64, bn=False) == 31_030_658
  model = build_model("unet", 2, depth=4, base_features=64, batch_norm=True)
  n = count_params(_params(model, (1, 32, 32, 3)))
  assert n == unet_param_count(3, 2, 4, 64, bn=True) == 31_037_698


@pytest.mark.parametrize("bn,upsample", [(True, "transpose"), (False, "bilinear")])
def test_parameter_count_independent_of_input_size(bn, upsample):
  model = build_model("unet", 5, depth=3, base_features=8, batch_norm=bn, upsample=upsample)
  counts = {count_params(_params(model, (1, s, s, 3))) for s in (8, 16, 48)}
  assert counts == {unet_param_count(3, 5, 3, 8, bn, upsample == "transpose")}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_logits_are_float32_at_input_resolution(dtype):
  model = build_model("unet", 4, depth=2, base_features=4, dtype=dtype, dropout_rate=0.5)
  x = jnp.ones((2, 24, 40, 3))
  with jax.threefry_partitionable(False):  # as create_train_state: XLA:CPU compiles the other one slowly
    variables = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(x)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
  apply = jax.jit(lambda v, x: model.apply(v, x, train=True, rngs={"dropout": jax.random.key(1)},
                                           mutable=["batch_stats"]))
  y, _ = apply(variables, x)
  assert y.shape == (2, 24, 40, 4) and y.dtype == jnp.float32


def test_rejects_sizes_not_divisible():
  model = build_model("unet", 2, depth=3, base_features=4)
  with pytest.raises(ValueError, match="divisible by 8"):
    model.init(jax.random.key(0), jnp.ones((1, 20, 24, 1)), train=False)


def test_unknown_model_and_option_errors():
  with pytest.raises(ValueError, match="known models"):
    build_model("unett", 2)
  with pytest.raises(ValueError, match="no option"):
    build_model("unet", 2, widht=3)


def test_upconv_equals_flax_conv_transpose():
  x = jax.random.normal(jax.random.key(0), (2, 5, 7, 6))
  ours = unet.UpConv2x2(4)
  ref = nn.ConvTranspose(4, (2, 2), strides=(2, 2), padding="VALID")
  params = ours.init(jax.random.key(1), x)
  y = ours.apply(params, x)
  y_ref = ref.apply(params, x)  # same parameter names and shapes: kernel [2, 2, Cin, Cout], bias
  chex.assert_shape(y, (2, 10, 14, 4))
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
  g = jax.grad(lambda p: (ours.apply(p, x) ** 2).sum())(params)
  g_ref = jax.grad(lambda p: (ref.apply(p, x) ** 2).sum())(params)
  chex.assert_trees_all_close(g, g_ref, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------------------------------------
# UNetValid


def _numpy_variables(model, shape, seed=0):
  """Variables with `model.init`'s structure, filled from numpy (He-scaled normal weights, unit BN stats).

  XLA:CPU takes over a minute to compile the threefry random initialisers of a whole U-Net on a loaded
  2-core machine; tests only need some well-scaled values.
  """
  _, variables = abstract_init(model, shape)
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name in ("var", "scale"):
      return (1.0 + 0.1 * rng.random(leaf.shape)).astype(np.float32)
    if name in ("mean", "bias"):
      return (0.1 * rng.standard_normal(leaf.shape)).astype(np.float32)
    fan_in = int(np.prod(leaf.shape[:-1]))
    return (rng.standard_normal(leaf.shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, variables)


def _dropout_key(seed):
  # The 'rbg' generator compiles in a fraction of threefry's time on XLA:CPU.
  return jax.random.key(seed, impl="rbg")


def test_paper_tile_572_gives_388_with_fig1_feature_map_sizes():
  # Ronneberger et al. 2015, Fig. 1: 572x572 input tile, 388x388 output segmentation map, and the side of
  # every feature map written in the figure.
  model = UNetValid(num_classes=2)
  logits, variables = abstract_init(model, (1, 572, 572, 1), capture_intermediates=True)
  assert logits.shape == (1, 388, 388, 2) and logits.dtype == jnp.float32
  sides = {k: v["__call__"][0].shape[1] for k, v in variables["intermediates"].items() if k != "__call__"}
  fig1 = {"down0": 568, "down1": 280, "down2": 136, "down3": 64, "bottleneck": 28,
          "upconv3": 56, "up3": 52, "upconv2": 104, "up2": 100, "upconv1": 200, "up1": 196,
          "upconv0": 392, "up0": 388}
  assert {k: sides[k] for k in fig1} == fig1
  assert model.output_size(572) == 388
  assert model.input_margin == (572 - 388) // 2 == 92
  assert model.input_size_for(388) == 572


def test_paper_network_has_31_0m_parameters_like_the_padded_one():
  # 1 input channel, 2 classes, 64 base features, 4 poolings, no BN: 31,030,658 (the padded UNet's count,
  # test_paper_unet_has_31_0m_parameters; padding adds no parameters). The parameter trees are identical, so
  # weights transfer.
  model = UNetValid(num_classes=2)
  _, variables = abstract_init(model, (1, model.min_input_size, model.min_input_size, 1))
  assert count_params(variables["params"]) == 31_030_658
  padded = unet.UNet(num_classes=2, batch_norm=False)
  padded_vars = jax.eval_shape(lambda: padded.init(KEYS, jnp.zeros((1, 32, 32, 1)), train=False))
  shapes = lambda t: jax.tree.map(lambda a: a.shape, t)  # noqa: E731
  assert shapes(variables["params"]) == shapes(padded_vars["params"])


def _closed_form_valid_sizes(depth, upto):
  """Valid input sides and their outputs, from the paper's arithmetic written out in closed form.

  With t the side entering the bottleneck, the input is 2^d t + 4 (2^d - 1) (each level: two convs lose 4,
  the pooling halves) and the expanding level k has side 2^k (t - 8) + 4 after its convolutions; the input is
  valid when the bottleneck output t - 4 and every expanding side are >= 1.
  """
  sizes = {}
  for t in range(1, upto):
    size = 2**depth * t + 4 * (2**depth - 1)
    outs = [2**k * (t - 8) + 4 for k in range(1, depth + 1)]
    if t - 4 >= 1 and min(outs) >= 1 and size <= upto:
      sizes[size] = outs[-1]
  return sizes


@pytest.mark.parametrize("depth", [2, 3, 4])
def test_output_size_and_input_size_for_match_the_network(depth):
  model = UNetValid(num_classes=3, depth=depth, base_features=2)
  expected = _closed_form_valid_sizes(depth, 400)
  for size in range(1, 400):
    if size in expected:
      assert model.output_size(size) == expected[size]
    else:
      with pytest.raises(ValueError, match="Nearest valid sizes"):
        model.output_size(size)
  # Actual shapes for a few valid sizes, non-square.
  valid = sorted(expected)
  for h, w in [(valid[0], valid[1]), (valid[3], valid[0])]:
    logits, _ = abstract_init(model, (2, h, w, 1))
    assert logits.shape == (2, expected[h], expected[w], 3)
    assert model.input_margin == (h - expected[h]) // 2 == (w - expected[w]) // 2
  # input_size_for: the smallest valid input reaching the requested output.
  for min_output in (1, 5, 37, 100):
    size = model.input_size_for(min_output)
    assert size == min(s for s, out in expected.items() if out >= min_output)
  assert model.min_input_size == valid[0]


def test_invalid_input_raises_naming_the_nearest_sizes():
  model = UNetValid(num_classes=2, depth=2, base_features=2)
  with pytest.raises(ValueError, match=r"side of 50.*48 or 52"):
    model.init(KEYS, jnp.zeros((1, 48, 50, 1)), train=False)


def _reference_forward(params, x, depth, shift=0):
  """The unpadded U-Net written with lax convolutions and explicit numpy-style centre crops.

  `shift` moves every skip crop window by that many pixels (to show the comparison can fail).
  """
  def conv(x, p):
    y = lax.conv_general_dilated(x, p["kernel"], (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + p["bias"]

  def block(x, p):
    return jax.nn.relu(conv(jax.nn.relu(conv(x, p["Conv_0"])), p["Conv_1"]))

  skips = []
  for level in range(depth):
    x = block(x, params[f"down{level}"])
    skips.append(x)
    x = nn.max_pool(x, (2, 2), (2, 2))
  x = block(x, params["bottleneck"])
  for level in reversed(range(depth)):
    p = params[f"upconv{level}"]
    x = nn.ConvTranspose(p["kernel"].shape[-1], (2, 2), (2, 2), padding="VALID").apply({"params": p}, x)
    skip = skips[level]
    top = (skip.shape[1] - x.shape[1]) // 2 + shift
    left = (skip.shape[2] - x.shape[2]) // 2 + shift
    skip = skip[:, top:top + x.shape[1], left:left + x.shape[2], :]
    x = block(jnp.concatenate([skip, x], axis=-1), params[f"up{level}"])
  return conv(x, params["classifier"])


def test_skip_connections_are_centre_crops():
  model = UNetValid(num_classes=3, depth=2, base_features=4)
  x = np.random.default_rng(2).standard_normal((2, 48, 52, 2)).astype(np.float32)
  variables = _numpy_variables(model, x.shape)
  y = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  assert y.shape == (2, 8, 12, 3)
  np.testing.assert_allclose(y, _reference_forward(variables["params"], x, depth=2), rtol=1e-4, atol=1e-4)
  off_centre = _reference_forward(variables["params"], x, depth=2, shift=1)
  assert not np.allclose(y, off_centre, rtol=1e-3, atol=1e-3)


def test_valid_unet_parameters_independent_of_size_bn_dropout_and_bf16():
  model = UNetValid(num_classes=4, depth=2, base_features=4, batch_norm=True, dtype=jnp.bfloat16)
  counts = {count_params(abstract_init(model, (1, s, s, 3))[1]["params"]) for s in (44, 48, 92)}
  assert len(counts) == 1
  abstract = abstract_init(model, (2, 44, 48, 3))[1]
  assert set(abstract) == {"params", "batch_stats"}
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(abstract["params"]))
  x = np.random.default_rng(0).standard_normal((2, 44, 48, 3)).astype(np.float32)
  variables = _numpy_variables(model, x.shape)
  apply = jax.jit(lambda v, x, key: model.apply(v, x, train=True, rngs={"dropout": key}, mutable=["batch_stats"]))
  y1, _ = apply(variables, x, _dropout_key(3))
  y2, _ = apply(variables, x, _dropout_key(4))
  assert y1.shape == (2, 4, 8, 4) and y1.dtype == jnp.float32
  assert not np.allclose(y1, y2)  # dropout (rate 0.5 by default) is active in training
