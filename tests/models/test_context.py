"""Yu & Koltun's dilated front-end and context module: Table 1's parameters and receptive fields, the identity
initialisation, and ContextNet's layers against numpy convolutions.

Full-size networks are only traced abstractly (`jax.eval_shape`); numerics run on narrow variants.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax.models import context
from tests.models.common import (TINY_STAGES, VGG16_CONV_PARAMS, abstract_intermediates,
                                 assert_config_fields_and_float32, conv_param_count, count_params, np_conv, np_resize,
                                 random_like)


def _table1_params(c, large):
  """Yu & Koltun, Table 1: eight layers, 3x3 except the last 1x1, output channels per the Basic/Large rows."""
  outs = [2 * c, 2 * c, 4 * c, 8 * c, 16 * c, 32 * c, 32 * c, c] if large else [c] * 8
  ins = [c] + outs[:-1]
  return sum(conv_param_count(i, o, 3 if n < 7 else 1) for n, (i, o) in enumerate(zip(ins, outs)))


@pytest.mark.parametrize("large", [False, True])
def test_context_module_parameters_follow_table1(large):
  module = context.ContextModule(21, large=large)
  params = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, 8, 8, 21))))["params"]
  assert count_params(params) == _table1_params(21, large) == (6_803_139 if large else 28_392)
  assert list(params) == ["ctx_conv1_1", "ctx_conv1_2", "ctx_conv2_1", "ctx_conv3_1", "ctx_conv4_1",
                          "ctx_conv5_1", "ctx_fc1", "ctx_final"]


def test_context_module_receptive_fields_follow_table1():
  # With positive weights and inputs nothing is truncated, so the support of d out[centre] / d input is the
  # receptive field. Table 1: 3, 5, 9, 17, 33, 65, 67, 67.
  module = context.ContextModule(2)
  x = jnp.ones((1, 81, 81, 2))
  params = random_like(jax.eval_shape(lambda: module.init(jax.random.key(0), x))["params"], positive=True)

  def centres(x):
    _, state = module.apply({"params": params}, x, capture_intermediates=True, mutable=["intermediates"])
    return jnp.stack([state["intermediates"][name]["__call__"][0][0, 40, 40, 0] for name, *_ in
                      context.CONTEXT_LAYERS])

  jac = np.asarray(jax.jit(jax.jacrev(centres))(x))  # [8, 1, 81, 81, 2]
  fields = []
  for g in jac:
    rows, cols = np.nonzero(np.abs(g[0]).sum(-1))
    assert rows.max() - rows.min() == cols.max() - cols.min()
    fields.append(int(rows.max() - rows.min() + 1))
  assert fields == [3, 5, 9, 17, 33, 65, 67, 67]


def test_context_module_identity_initialisation():
  # rbg keys: XLA:CPU compiles threefry-based initialisers very slowly.
  x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 24, 20, 5)), jnp.float32)
  # Basic: the exact identity, so the module is the first truncation max(x, 0) (identity for x >= 0).
  basic = context.ContextModule(5)
  y = jax.jit(basic.apply)(jax.jit(basic.init)(jax.random.key(0, impl="rbg"), x), x)
  np.testing.assert_allclose(y, np.maximum(x, 0), atol=1e-6)
  # Large without noise: C/c_{i+1} on the tied channels is the identity too.
  exact = context.ContextModule(5, large=True, init_noise=0.0)
  variables = jax.jit(exact.init)(jax.random.key(0, impl="rbg"), x)
  np.testing.assert_allclose(jax.jit(exact.apply)(variables, x), np.maximum(x, 0), atol=1e-5)
  k = np.asarray(variables["params"]["ctx_conv1_1"]["kernel"])  # C -> 2C: output b copies input b // 2, weight 1/2
  expected = np.zeros((3, 3, 5, 10))
  expected[1, 1, np.arange(10) // 2, np.arange(10)] = 0.5
  np.testing.assert_array_equal(k, expected)
  k = np.asarray(variables["params"]["ctx_final"]["kernel"])  # 32C -> C: output b sums inputs 32b..32b+31
  expected = np.zeros((1, 1, 160, 5))
  expected[0, 0, np.arange(160), np.arange(160) // 32] = 1.0
  np.testing.assert_array_equal(k, expected)
  # Large with the paper's noise term: off-identity entries N(0, (init_noise * C / c_{i+1})**2).
  noisy = context.ContextModule(5, large=True)
  variables = jax.jit(noisy.init)(jax.random.key(0, impl="rbg"), x)
  k = np.asarray(variables["params"]["ctx_conv5_1"]["kernel"])  # 16C -> 32C: blocks of 16 inputs, 32 outputs
  off = np.ones(k.shape, bool)
  off[1, 1] = np.arange(80)[:, None] // 16 != np.arange(160)[None, :] // 32
  np.testing.assert_allclose(k[off].std(), 0.001 * 5 / 160, rtol=0.05)
  np.testing.assert_array_equal(k[~off], 5 / 160)
  y = jax.jit(noisy.apply)(variables, jnp.abs(x))
  assert float(jnp.sqrt(jnp.mean((y - jnp.abs(x)) ** 2) / jnp.mean(x ** 2))) < 0.03


# ---------------------------------------------------------------- ContextNet


@pytest.mark.parametrize("ctx", ["none", "basic", "large"])
def test_contextnet_counts_shapes_and_output_stride(ctx):
  frontend = (VGG16_CONV_PARAMS + conv_param_count(512, 4096, 7) + conv_param_count(4096, 4096, 1)
              + conv_param_count(4096, 21, 1))
  expected = frontend + (0 if ctx == "none" else _table1_params(21, ctx == "large"))
  counts = set()
  for hw in [(32, 48), (37, 64), (1, 1)]:
    variables, out, inter = abstract_intermediates(context.ContextNet(21, context=ctx), (2, *hw, 3))
    counts.add(count_params(variables["params"]))
    assert out.shape == (2, *hw, 21) and out.dtype == jnp.float32
    stride8 = tuple(math.ceil(n / 8) for n in hw)
    assert inter["final"]["__call__"][0].shape == (2, *stride8, 21)
    assert inter["backbone"]["__call__"][0]["conv5"].shape == (2, *stride8, 512)
  assert counts == {expected}


def test_contextnet_layers_match_numpy_convolutions():
  model = context.ContextNet(3, context="large", stages=TINY_STAGES, fc_features=8)
  x = np.random.default_rng(4).normal(size=(1, 37, 30, 3)).astype(np.float32)
  params = random_like(abstract_intermediates(model, x.shape)[0]["params"], seed=5)
  y, state = jax.jit(lambda x: model.apply({"params": params}, x, train=False, capture_intermediates=True,
                                           mutable=["intermediates"]))(x)
  inter = jax.tree.map(np.asarray, state["intermediates"])
  p = jax.tree.map(np.asarray, params)
  feats = inter["backbone"]["__call__"][0]
  assert sorted(feats) == ["conv1", "conv2", "conv3", "conv4", "conv5", "pool1", "pool2", "pool3"]
  conv5_1 = inter["backbone"]["conv5_1"]["__call__"][0][0]  # pool4 removed; dilation 2
  np.testing.assert_allclose(conv5_1, np_conv(feats["conv4"][0], **p["backbone"]["conv5_1"], dilation=2, pad=2),
                             rtol=1e-4, atol=1e-4)
  fc6 = inter["fc6"]["__call__"][0][0]  # 7x7, dilation 4 (SAME here: padding 12)
  np.testing.assert_allclose(fc6, np_conv(feats["conv5"][0], **p["fc6"], dilation=4, pad=12), rtol=1e-4,
                             atol=1e-4)
  ctx = inter["context"]["ctx_final"]["__call__"][0][0]
  np.testing.assert_allclose(y[0], np_resize(ctx, (37, 30), 8, 3.5), rtol=1e-4, atol=1e-4)


def test_fields_are_config_values_and_logits_float32():
  assert_config_fields_and_float32(context.ContextNet)
  with pytest.raises(ValueError, match="'basic', 'large' or 'none'"):
    abstract_intermediates(context.ContextNet(4, context="huge"), (1, 16, 16, 3))
