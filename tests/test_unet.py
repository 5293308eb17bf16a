"""U-Net: shapes, dtypes, parameter counts against an independent formula, and the matmul up-convolution."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax.models import build_model, unet


def _count(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def _params(model, shape):
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False))["params"]


def unet_param_count(in_ch, classes, depth, base, bn, transpose=True):
  """Parameter count of the U-Net written out layer by layer from the paper's description."""
  def conv(cin, cout, k, bias=True):
    return k * k * cin * cout + (cout if bias else 0)

  def block(cin, cout):  # two 3x3 convs; with BN the conv has no bias and BN adds scale + offset
    if bn:
      return conv(cin, cout, 3, False) + 2 * cout + conv(cout, cout, 3, False) + 2 * cout
    return conv(cin, cout, 3) + conv(cout, cout, 3)

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
  n = _count(_params(model, (1, 32, 32, 1)))
  assert n == unet_param_count(1, 2, 4, 64, bn=False) == 31_030_658
  model = build_model("unet", 2, depth=4, base_features=64, batch_norm=True)
  n = _count(_params(model, (1, 32, 32, 3)))
  assert n == unet_param_count(3, 2, 4, 64, bn=True) == 31_037_698


@pytest.mark.parametrize("bn,upsample", [(True, "transpose"), (False, "bilinear")])
def test_parameter_count_independent_of_input_size(bn, upsample):
  model = build_model("unet", 5, depth=3, base_features=8, batch_norm=bn, upsample=upsample)
  counts = {_count(_params(model, (1, s, s, 3))) for s in (8, 16, 48)}
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
  assert y.shape == (2, 10, 14, 4)
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
  g = jax.grad(lambda p: (ours.apply(p, x) ** 2).sum())(params)
  g_ref = jax.grad(lambda p: (ref.apply(p, x) ** 2).sum())(params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), g, g_ref)


def test_max_pool_equals_flax_max_pool():
  x = jax.random.normal(jax.random.key(0), (2, 6, 8, 3))
  np.testing.assert_array_equal(unet.max_pool_2x2(x), nn.max_pool(x, (2, 2), strides=(2, 2)))
