"""DeepLab-LargeFOV and Yu & Koltun's front-end + context module: published counts, geometry, identity init.

Full-size networks are only traced abstractly (`jax.eval_shape`); numerics run on narrow variants.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax.models import context, deeplab

KEYS = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
TINY_STAGES = ((4, 2), (6, 2), (8, 3), (8, 3), (10, 3))  # VGG16's table with narrow channels
VGG16_CONV_PARAMS = 14_714_688  # torchvision vgg16().features


def _count(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def _abstract(model, shape):
  """(abstract variables, abstract logits, abstract intermediates) without running anything."""
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(KEYS, x, train=False), x)
  out, state = jax.eval_shape(lambda v, x: model.apply(v, x, train=False, capture_intermediates=True,
                                                       mutable=["intermediates"]), variables, x)
  return variables, out, state["intermediates"]


def _random_like(tree, seed=0, positive=False):
  rng = np.random.default_rng(seed)

  def fill(s):
    if positive:
      return jnp.asarray(rng.uniform(0.5, 1.5, s.shape) / np.prod(s.shape[:-1]), s.dtype)
    scale = np.sqrt(2.0 / np.prod(s.shape[:-1])) if len(s.shape) == 4 else 0.1
    return jnp.asarray(rng.normal(0.0, scale, s.shape), s.dtype)
  return jax.tree.map(fill, tree)


def _conv_params(cin, cout, k):
  return k * k * cin * cout + cout


def _np_conv(x, kernel, bias, dilation, pad):
  """Direct dilated cross-correlation of [H, W, Ci] with [k, k, Ci, Co], zero padding `pad`."""
  k = kernel.shape[0]
  xp = np.pad(x, ((pad, pad), (pad, pad), (0, 0)))
  ho, wo = xp.shape[0] - dilation * (k - 1), xp.shape[1] - dilation * (k - 1)
  out = np.zeros((ho, wo, kernel.shape[-1])) + bias
  for u in range(k):
    for v in range(k):
      out += xp[u * dilation:u * dilation + ho, v * dilation:v * dilation + wo] @ kernel[u, v]
  return out


def _caffe_pool(n, k, s, p):
  return math.ceil((n + 2 * p - k) / s) + 1  # pooling_layer.cpp (no clipping needed for these sizes)


# ---------------------------------------------------------------- DeepLab-LargeFOV


def test_deeplab_parameter_count_is_the_papers_20_5m():
  # DeepLab-LargeFOV prototxt: VGG16 convs, fc6 3x3x512x1024, fc7 1x1x1024x1024, fc8 1x1x1024x21.
  expected = VGG16_CONV_PARAMS + _conv_params(512, 1024, 3) + _conv_params(1024, 1024, 1) + _conv_params(1024, 21, 1)
  counts = {_count(_abstract(deeplab.DeepLabLargeFOV(21), (1, *hw, 3))[0]["params"])
            for hw in [(1, 1), (32, 48), (321, 321)]}
  assert counts == {expected} and expected == 20_505_429
  assert round(expected / 1e6, 1) == 20.5  # Chen et al. 2015, Table 2: DeepLab-CRF-LargeFOV, 20.5M


@pytest.mark.parametrize("hw", [(321, 321), (32, 48), (40, 56), (1, 1), (33, 47)])
def test_deeplab_output_stride_8_and_input_size(hw):
  _, out, inter = _abstract(deeplab.DeepLabLargeFOV(21), (2, *hw, 3))
  assert out.shape == (2, *hw, 21) and out.dtype == jnp.float32
  # Three 3x3/2 pad-1 Caffe poolings (pool4, pool5: 3x3/1 pad 1 keep the size); 321 -> 41 as in the paper.
  expected = [n for n in hw]
  for _ in range(3):
    expected = [_caffe_pool(n, 3, 2, 1) for n in expected]
  assert inter["fc8"]["__call__"][0].shape == (2, *expected, 21)
  if hw == (321, 321):
    assert expected == [41, 41]


def _np_interp(x, size, stride, centre):
  """Samples x [n, ...] along axis 0 at (y - centre) / stride for y < size, linearly, clamped at the ends."""
  pos = np.clip((np.arange(size) - centre) / stride, 0, x.shape[0] - 1)
  lo = np.minimum(np.floor(pos).astype(int), x.shape[0] - 2)
  frac = (pos - lo).reshape((size,) + (1,) * (x.ndim - 1))
  return x[lo] * (1 - frac) + x[lo + 1] * frac


def _np_resize(x, size, stride, centre):
  """[h, w, C] scores -> [size[0], size[1], C] pixels, score (i, j) sitting over pixel (stride*i + centre, ...)."""
  rows = _np_interp(x, size[0], stride, centre)
  return np.stack([_np_interp(r, size[1], stride, centre) for r in rows])


@pytest.mark.parametrize("centre,size", [(0.0, (33, 40)), (3.5, (37, 44))])
def test_upsample_aligned_matches_numpy(centre, size):
  x = np.random.default_rng(0).normal(size=(1, 5, 6, 2))
  y = deeplab.upsample_aligned(jnp.asarray(x, jnp.float32), size, 8, centre)
  np.testing.assert_allclose(y[0], _np_resize(x[0], size, 8, centre), rtol=1e-5, atol=1e-5)


def test_deeplab_layers_match_numpy_convolutions():
  model = deeplab.DeepLabLargeFOV(3, stages=TINY_STAGES, fc_features=8)
  x = np.random.default_rng(1).normal(size=(1, 33, 41, 3)).astype(np.float32)
  params = _random_like(_abstract(model, x.shape)[0]["params"], seed=2)
  run = jax.jit(lambda x, train: model.apply({"params": params}, x, train=train, rngs={"dropout": KEYS["dropout"]},
                                             capture_intermediates=True, mutable=["intermediates"]),
                static_argnums=1)
  y, state = run(x, False)
  inter = jax.tree.map(np.asarray, state["intermediates"])
  p = jax.tree.map(np.asarray, params)
  feats = inter["backbone"]["__call__"][0]
  assert [feats[f"pool{s}"].shape[1:3] for s in range(1, 6)] == [(17, 21), (9, 11), (5, 6), (5, 6), (5, 6)]
  conv5_1 = inter["backbone"]["conv5_1"]["__call__"][0][0]  # dilation 2, padding 2
  np.testing.assert_allclose(conv5_1, _np_conv(feats["pool4"][0], **p["backbone"]["conv5_1"], dilation=2, pad=2),
                             rtol=1e-4, atol=1e-4)
  fc6 = inter["fc6"]["__call__"][0][0]  # 3x3, dilation 12, padding 12
  np.testing.assert_allclose(fc6, _np_conv(feats["pool5"][0], **p["fc6"], dilation=12, pad=12), rtol=1e-4,
                             atol=1e-4)
  fc8 = _np_conv(np.maximum(inter["fc7"]["__call__"][0][0], 0), **p["fc8"], dilation=1, pad=0)
  np.testing.assert_allclose(y[0], _np_resize(fc8, (33, 41), 8, 0), rtol=1e-4, atol=1e-4)
  y_train, _ = run(x, True)
  assert y_train.shape == y.shape and not np.allclose(y_train, y)  # dropout 0.5 after fc6 and fc7


# ---------------------------------------------------------------- context module


def _table1_params(c, large):
  """Yu & Koltun, Table 1: eight layers, 3x3 except the last 1x1, output channels per the Basic/Large rows."""
  outs = [2 * c, 2 * c, 4 * c, 8 * c, 16 * c, 32 * c, 32 * c, c] if large else [c] * 8
  ins = [c] + outs[:-1]
  return sum(_conv_params(i, o, 3 if n < 7 else 1) for n, (i, o) in enumerate(zip(ins, outs)))


@pytest.mark.parametrize("large", [False, True])
def test_context_module_parameters_follow_table1(large):
  module = context.ContextModule(21, large=large)
  params = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, 8, 8, 21))))["params"]
  assert _count(params) == _table1_params(21, large) == (6_803_139 if large else 28_392)
  assert list(params) == ["ctx_conv1_1", "ctx_conv1_2", "ctx_conv2_1", "ctx_conv3_1", "ctx_conv4_1",
                          "ctx_conv5_1", "ctx_fc1", "ctx_final"]


def test_context_module_receptive_fields_follow_table1():
  # With positive weights and inputs nothing is truncated, so the support of d out[centre] / d input is the
  # receptive field. Table 1: 3, 5, 9, 17, 33, 65, 67, 67.
  module = context.ContextModule(2)
  x = jnp.ones((1, 81, 81, 2))
  params = _random_like(jax.eval_shape(lambda: module.init(jax.random.key(0), x))["params"], positive=True)

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
  frontend = (VGG16_CONV_PARAMS + _conv_params(512, 4096, 7) + _conv_params(4096, 4096, 1)
              + _conv_params(4096, 21, 1))
  expected = frontend + (0 if ctx == "none" else _table1_params(21, ctx == "large"))
  counts = set()
  for hw in [(32, 48), (37, 64), (1, 1)]:
    variables, out, inter = _abstract(context.ContextNet(21, context=ctx), (2, *hw, 3))
    counts.add(_count(variables["params"]))
    assert out.shape == (2, *hw, 21) and out.dtype == jnp.float32
    stride8 = tuple(math.ceil(n / 8) for n in hw)
    assert inter["final"]["__call__"][0].shape == (2, *stride8, 21)
    assert inter["backbone"]["__call__"][0]["conv5"].shape == (2, *stride8, 512)
  assert counts == {expected}


def test_contextnet_layers_match_numpy_convolutions():
  model = context.ContextNet(3, context="large", stages=TINY_STAGES, fc_features=8)
  x = np.random.default_rng(4).normal(size=(1, 37, 30, 3)).astype(np.float32)
  params = _random_like(_abstract(model, x.shape)[0]["params"], seed=5)
  y, state = jax.jit(lambda x: model.apply({"params": params}, x, train=False, capture_intermediates=True,
                                           mutable=["intermediates"]))(x)
  inter = jax.tree.map(np.asarray, state["intermediates"])
  p = jax.tree.map(np.asarray, params)
  feats = inter["backbone"]["__call__"][0]
  assert sorted(feats) == ["conv1", "conv2", "conv3", "conv4", "conv5", "pool1", "pool2", "pool3"]
  conv5_1 = inter["backbone"]["conv5_1"]["__call__"][0][0]  # pool4 removed; dilation 2
  np.testing.assert_allclose(conv5_1, _np_conv(feats["conv4"][0], **p["backbone"]["conv5_1"], dilation=2, pad=2),
                             rtol=1e-4, atol=1e-4)
  fc6 = inter["fc6"]["__call__"][0][0]  # 7x7, dilation 4 (SAME here: padding 12)
  np.testing.assert_allclose(fc6, _np_conv(feats["conv5"][0], **p["fc6"], dilation=4, pad=12), rtol=1e-4,
                             atol=1e-4)
  ctx = inter["context"]["ctx_final"]["__call__"][0][0]
  np.testing.assert_allclose(y[0], _np_resize(ctx, (37, 30), 8, 3.5), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- both


def test_fields_are_config_values_and_logits_float32():
  for cls in (deeplab.DeepLabLargeFOV, context.ContextNet):
    fields = [f for f in dataclasses.fields(cls) if f.name not in ("parent", "name")]
    assert fields[0].name == "num_classes"
    for f in fields[1:]:
      if f.name not in ("dtype", "param_dtype"):
        assert isinstance(f.default, (int, float, bool, str, tuple)), f.name
    variables, out, _ = _abstract(cls(4, dtype=jnp.bfloat16), (1, 24, 16, 3))
    assert out.dtype == jnp.float32
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
  with pytest.raises(ValueError, match="'basic', 'large' or 'none'"):
    _abstract(context.ContextNet(4, context="huge"), (1, 16, 16, 3))
