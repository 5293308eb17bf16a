"""U-Net variants: the unpadded original (Ronneberger et al. 2015, Fig. 1) and U-Net with a VGG16 encoder."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from segjax.models import unet
from segjax.models.unet import UNetValid
from segjax.models.unet_vgg import DecoderBlock, UNetVGG16

_RNGS = {"params": jax.random.key(0), "dropout": jax.random.key(1)}


def _count(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def _abstract_init(model, shape, **kwargs):
  """(logits, variables) as shapes only: no real initialisation or forward pass."""
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  return jax.eval_shape(lambda x: model.init_with_output(_RNGS, x, train=False, **kwargs), x)


def _numpy_variables(model, shape, seed=0):
  """Variables with `model.init`'s structure, filled from numpy (He-scaled normal weights, unit BN stats).

  XLA:CPU takes over a minute to compile the threefry random initialisers of a whole U-Net on a loaded
  2-core machine; tests only need some well-scaled values.
  """
  _, variables = _abstract_init(model, shape)
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


# ----------------------------------------------------------------------------------------------------------
# UNetValid


def test_paper_tile_572_gives_388_with_fig1_feature_map_sizes():
  # Ronneberger et al. 2015, Fig. 1: 572x572 input tile, 388x388 output segmentation map, and the side of
  # every feature map written in the figure.
  model = UNetValid(num_classes=2)
  logits, variables = _abstract_init(model, (1, 572, 572, 1), capture_intermediates=True)
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
  # tests/test_unet.py; padding adds no parameters). The parameter trees are identical, so weights transfer.
  model = UNetValid(num_classes=2)
  _, variables = _abstract_init(model, (1, model.min_input_size, model.min_input_size, 1))
  assert _count(variables["params"]) == 31_030_658
  padded = unet.UNet(num_classes=2, batch_norm=False)
  padded_vars = jax.eval_shape(lambda: padded.init(_RNGS, jnp.zeros((1, 32, 32, 1)), train=False))
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
    logits, _ = _abstract_init(model, (2, h, w, 1))
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
    model.init(_RNGS, jnp.zeros((1, 48, 50, 1)), train=False)


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


def test_center_crop_helper():
  x = np.arange(2 * 9 * 8 * 1).reshape(2, 9, 8, 1)
  np.testing.assert_array_equal(unet.center_crop(jnp.asarray(x), (4, 4)), x[:, 2:6, 2:6, :])
  with pytest.raises(ValueError):
    unet.center_crop(jnp.asarray(x), (10, 4))


def test_valid_unet_parameters_independent_of_size_bn_dropout_and_bf16():
  model = UNetValid(num_classes=4, depth=2, base_features=4, batch_norm=True, dtype=jnp.bfloat16)
  counts = {_count(_abstract_init(model, (1, s, s, 3))[1]["params"]) for s in (44, 48, 92)}
  assert len(counts) == 1
  abstract = _abstract_init(model, (2, 44, 48, 3))[1]
  assert set(abstract) == {"params", "batch_stats"}
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(abstract["params"]))
  x = np.random.default_rng(0).standard_normal((2, 44, 48, 3)).astype(np.float32)
  variables = _numpy_variables(model, x.shape)
  apply = jax.jit(lambda v, x, key: model.apply(v, x, train=True, rngs={"dropout": key}, mutable=["batch_stats"]))
  y1, _ = apply(variables, x, _dropout_key(3))
  y2, _ = apply(variables, x, _dropout_key(4))
  assert y1.shape == (2, 4, 8, 4) and y1.dtype == jnp.float32
  assert not np.allclose(y1, y2)  # dropout (rate 0.5 by default) is active in training


# ----------------------------------------------------------------------------------------------------------
# UNetVGG16 (TernausNet-16)


def _conv(cin, cout, k=3):
  return k * k * cin * cout + cout


# VGG16's 13 convolutions (Simonyan & Zisserman 2015, Table 1, configuration D): 14,714,688, the parameter count
# of torchvision's `vgg16().features`.
_VGG16_CONVS = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
                (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]


def ternausnet16_param_count(classes, f=32, transpose=False, bn=False):
  """TernausNet's UNet16 (ternausnet/models.py) written out block by block: (input, middle, output) widths."""
  encoder = sum(_conv(cin, cout) for cin, cout in _VGG16_CONVS)
  if bn:
    encoder += sum(2 * cout for _, cout in _VGG16_CONVS)  # BatchNorm scale and offset
  blocks = [(512, 16 * f, 8 * f),           # center: pool5
            (512 + 8 * f, 16 * f, 8 * f),   # dec5: center + conv5
            (512 + 8 * f, 16 * f, 8 * f),   # dec4: dec5 + conv4
            (256 + 8 * f, 8 * f, 2 * f),    # dec3: dec4 + conv3
            (128 + 2 * f, 4 * f, f)]        # dec2: dec3 + conv2
  # bilinear: two 3x3 convs; transpose: a 3x3 conv and a 4x4 transposed conv.
  decoder = sum(_conv(cin, mid) + _conv(mid, out, 4 if transpose else 3) for cin, mid, out in blocks)
  decoder += _conv(64 + f, f)  # dec1: dec2 + conv1
  return encoder + decoder + _conv(f, classes, 1)


@pytest.mark.parametrize("kwargs,expected", [
    ({}, 29_306_465), ({"upsample": "transpose"}, 32_202_337), ({"batch_norm": True}, 29_314_913)])
def test_unet_vgg16_parameter_count(kwargs, expected):
  assert sum(_conv(cin, cout) for cin, cout in _VGG16_CONVS) == 14_714_688
  assert ternausnet16_param_count(1, transpose=kwargs.get("upsample") == "transpose",
                                  bn=kwargs.get("batch_norm", False)) == expected
  model = UNetVGG16(num_classes=1, **kwargs)
  counts = {_count(_abstract_init(model, (1, h, w, 3))[1]["params"]) for h, w in ((32, 32), (64, 96))}
  assert counts == {expected}
  assert _count(_abstract_init(UNetVGG16(num_classes=7, num_filters=8), (1, 32, 32, 3))[1]["params"]) == (
      ternausnet16_param_count(7, f=8))


@pytest.mark.parametrize("upsample", ["bilinear", "transpose"])
def test_unet_vgg16_shapes(upsample):
  model = UNetVGG16(num_classes=5, num_filters=8, upsample=upsample, dtype=jnp.bfloat16)
  logits, variables = _abstract_init(model, (2, 64, 96, 3), capture_intermediates=True)
  assert logits.shape == (2, 64, 96, 5) and logits.dtype == jnp.float32
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
  sides = {k: variables["intermediates"][k]["__call__"][0].shape[1:] for k in
           ("center", "dec5", "dec4", "dec3", "dec2", "dec1")}
  assert sides == {"center": (4, 6, 64), "dec5": (8, 12, 64), "dec4": (16, 24, 64), "dec3": (32, 48, 16),
                   "dec2": (64, 96, 8), "dec1": (64, 96, 8)}
  assert model.size_divisor == 32
  with pytest.raises(ValueError, match="divisible by 32"):
    _abstract_init(model, (1, 48, 64, 3))


def test_unet_vgg16_transposed_conv_is_pytorchs_k4_s2_p1():
  # PyTorch's ConvTranspose2d(kernel 4, stride 2, padding 1) is the gradient of Conv2d(kernel 4, stride 2,
  # padding 1) with respect to its input (PyTorch docs); Flax stores the kernel unflipped, hence the flip.
  block = DecoderBlock(middle=3, features=2, upsample="transpose")
  rng = np.random.default_rng(0)
  x = rng.standard_normal((1, 5, 6, 4)).astype(np.float32)
  shapes = jax.eval_shape(lambda: block.init(jax.random.key(0), x))["params"]
  params = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32), shapes)
  y = block.apply({"params": params}, x)
  assert y.shape == (1, 10, 12, 2)
  middle = jax.nn.relu(lax.conv_general_dilated(x, params["conv"]["kernel"], (1, 1), "SAME",
                                                dimension_numbers=("NHWC", "HWIO", "NHWC")) + params["conv"]["bias"])
  kernel = params["deconv"]["kernel"]  # [4, 4, middle, features]
  torch_weight = jnp.flip(kernel, (0, 1)).swapaxes(2, 3)  # the Conv2d(features -> middle) it is the gradient of

  def forward(z):  # Conv2d(kernel 4, stride 2, padding 1)
    return lax.conv_general_dilated(z, torch_weight, (2, 2), ((1, 1), (1, 1)),
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))

  adjoint = jax.vjp(forward, jnp.zeros((1, 10, 12, 2)))[1](middle)[0]
  np.testing.assert_allclose(y, jax.nn.relu(adjoint + params["deconv"]["bias"]), rtol=1e-4, atol=1e-4)
