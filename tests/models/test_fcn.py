"""FCN-32s/16s/8s: published parameter counts, Caffe's Deconvolution and crop geometry, and the FCN-8s head
against numpy.

Full-size networks are only traced abstractly (`jax.eval_shape`); numerics run on narrow variants.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax.models import fcn
from tests.models.common import (KEYS, TINY_STAGES, VGG16_CONV_PARAMS, abstract_apply, conv_param_count,
                                 count_params, random_like)


def test_fcn32s_with_1000_classes_is_torchvision_vgg16():
  # FCN's point: fc6/fc7/score_fr are torchvision's classifier as convolutions (7x7, 1x1, 1x1); with fixed
  # upsampling FCN-32s has exactly vgg16's 138,357,544 parameters (torchvision docs).
  variables, _ = abstract_apply(fcn.FCN32s(1000), (1, 40, 40, 3))
  assert count_params(variables["params"]) == 138_357_544
  assert variables["params"]["fc6"]["kernel"].shape == (7, 7, 512, 4096)


def _upsample_filt(size):
  """surgery.upsample_filt of fcn.berkeleyvision.org."""
  factor = (size + 1) // 2
  center = factor - 1 if size % 2 == 1 else factor - 0.5
  og = np.ogrid[:size, :size]
  return (1 - abs(og[0] - center) / factor) * (1 - abs(og[1] - center) / factor)


def _np_deconvolution(x, kernel, s):
  """Caffe's Deconvolution (no pad) of [H, W, Ci] with [k, k, Ci, Co]: x[i] * kernel[t] lands at i * s + t."""
  h, w, _ = x.shape
  k = kernel.shape[0]
  out = np.zeros(((h - 1) * s + k, (w - 1) * s + k, kernel.shape[-1]))
  for i in range(h):
    for j in range(w):
      for u in range(k):
        for v in range(k):
          out[i * s + u, j * s + v] += x[i, j] @ kernel[u, v]
  return out


@pytest.mark.parametrize("stride", [2, 3])
def test_deconvolution_matches_caffe_loop(stride):
  rng = np.random.default_rng(2)
  x = rng.normal(size=(1, 3, 5, 2)).astype(np.float32)
  kernel = rng.normal(size=(2 * stride, 2 * stride, 2, 3)).astype(np.float32)
  y = fcn.deconvolution(jnp.asarray(x), jnp.asarray(kernel), stride)
  np.testing.assert_allclose(y[0], _np_deconvolution(x[0], kernel, stride), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("learnable", [False, True])
def test_upscore_is_fcn_bilinear_deconvolution(learnable):
  x = np.random.default_rng(3).normal(size=(1, 4, 3, 2)).astype(np.float32)
  layer = fcn.Upscore(4, learnable=learnable)
  variables = layer.init(jax.random.key(0), x)
  kernel = np.zeros((8, 8, 2, 2))
  kernel[:, :, 0, 0] = kernel[:, :, 1, 1] = _upsample_filt(8)  # surgery.interp: diagonal over classes
  if learnable:
    np.testing.assert_allclose(variables["params"]["kernel"], kernel, atol=1e-7)
  else:
    assert not variables  # the reference's lr_mult: 0 filter is a constant, not a parameter
  np.testing.assert_allclose(layer.apply(variables, x)[0], _np_deconvolution(x[0], kernel, 4), rtol=1e-5,
                             atol=1e-5)


def test_crop_offsets_follow_from_the_layer_table():
  """Caffe's coord_map: each layer maps its output coordinate y to a*y + b in its input (conv/pool: a = stride,
  b = (k - 1) / 2 - pad; deconvolution: the inverse). Composing the reference net's table gives the offsets."""
  def compose(m, layers):
    a, b = m
    for k, s, p, deconv in layers:
      la, lb = (s, (k - 1) / 2 - p) if not deconv else (1 / s, -((k - 1) / 2 - p) / s)
      a, b = a * la, a * lb + b
    return a, b

  conv = lambda k=3, p=1: (k, 1, p, False)  # noqa: E731
  pool = (2, 2, 0, False)
  pool3 = compose((1, 0), [conv(3, 100), conv(), pool, conv(), conv(), pool, conv(), conv(), conv(), pool])
  pool4 = compose(pool3, [conv(), conv(), conv(), pool])
  score_fr = compose(pool4, [conv(), conv(), conv(), pool, conv(7, 0), conv(1, 0), conv(1, 0)])

  def offset(cropped, reference):  # y_cropped = y_reference + offset
    assert cropped[0] == reference[0]
    return (reference[1] - cropped[1]) / cropped[0]

  up2 = compose(score_fr, [(4, 2, 0, True)])
  assert offset(pool4, up2) == fcn.POOL4_OFFSET == 5
  up_pool4 = compose(up2, [(4, 2, 0, True)])
  assert offset(pool3, up_pool4) == fcn.POOL3_OFFSET == 9
  data = (1, 0)
  assert offset(compose(up_pool4, [(16, 8, 0, True)]), data) == fcn.OUTPUT_OFFSET[8] == 31
  assert offset(compose(up2, [(32, 16, 0, True)]), data) == fcn.OUTPUT_OFFSET[16] == 27
  assert offset(compose(score_fr, [(64, 32, 0, True)]), data) == fcn.OUTPUT_OFFSET[32] == 19


@pytest.mark.parametrize("cls", [fcn.FCN32s, fcn.FCN16s, fcn.FCN8s])
def test_fcn_output_has_input_size_and_params_do_not_depend_on_it(cls):
  counts = set()
  for hw in [(1, 1), (32, 48), (33, 47), (40, 56), (500, 375)]:
    variables, out = abstract_apply(cls(21), (2, *hw, 3))
    assert out.shape == (2, *hw, 21) and out.dtype == jnp.float32
    counts.add(count_params(variables["params"]))
  assert len(counts) == 1


def test_fcn8s_parameter_count_from_the_layer_table():
  # voc-fcn8s/net.py for 21 classes: VGG16 convs, fc6 7x7x512x4096, fc7 1x1x4096x4096, score_fr/score_pool4/
  # score_pool3 1x1 with bias, and bias-free upscore2 (4x4), upscore_pool4 (4x4), upscore8 (16x16), 21 -> 21.
  backbone = VGG16_CONV_PARAMS
  head = conv_param_count(512, 4096, 7) + conv_param_count(4096, 4096, 1) + conv_param_count(4096, 21, 1)
  skips = conv_param_count(512, 21, 1) + conv_param_count(256, 21, 1)
  upscore = (4 * 4 + 4 * 4 + 16 * 16) * 21 * 21
  fixed = count_params(abstract_apply(fcn.FCN8s(21), (1, 32, 32, 3))[0]["params"])
  learned = count_params(abstract_apply(fcn.FCN8s(21, learn_upsampling=True), (1, 32, 32, 3))[0]["params"])
  assert fixed == backbone + head + skips == 134_362_751
  assert learned == backbone + head + skips + upscore == 134_489_759
  assert round(learned / 1e6) == round(fixed / 1e6) == 134  # FCN paper Table 1: "134M" for FCN-VGG16
  fcn16 = count_params(abstract_apply(fcn.FCN16s(21, learn_upsampling=True), (1, 32, 32, 3))[0]["params"])
  assert fcn16 == backbone + head + conv_param_count(512, 21, 1) + (4 * 4 + 32 * 32) * 21 * 21


def test_fcn_fields_are_config_values():
  for cls in (fcn.FCN32s, fcn.FCN16s, fcn.FCN8s):
    fields = [f for f in dataclasses.fields(cls) if f.name not in ("parent", "name")]
    assert fields[0].name == "num_classes"
    for f in fields[1:]:
      if f.name not in ("dtype", "param_dtype"):
        assert isinstance(f.default, (int, float, bool, str, tuple)), f.name
  _, out = abstract_apply(fcn.FCN8s(3, dtype=jnp.bfloat16), (1, 20, 24, 3))
  assert out.dtype == jnp.float32


def test_fcn8s_matches_numpy_head_and_starts_at_zero():
  model = fcn.FCN8s(3, stages=TINY_STAGES, fc_features=8, learn_upsampling=True, pool4_scale=0.01,
                    pool3_scale=1e-4)
  x = np.random.default_rng(4).normal(size=(2, 20, 27, 3)).astype(np.float32)
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False, capture_intermediates=True,
                                           mutable=["intermediates"]))

  # The reference's init: zero score layers, so the initial logits are exactly zero.
  # rbg keys: XLA:CPU compiles threefry-based initialisers very slowly.
  variables = jax.jit(lambda x: model.init({"params": jax.random.key(0, impl="rbg")}, x, train=False))(x)
  for name in ("score_fr", "score_pool4", "score_pool3"):
    assert not np.any(variables["params"][name]["kernel"])
  assert not np.any(apply(variables, x)[0])

  params = dict(random_like(variables["params"], seed=5))
  # Undo the at-once scales in the skip kernels so that every branch moves the output.
  params["score_pool4"] = dict(params["score_pool4"], kernel=params["score_pool4"]["kernel"] * 300)
  params["score_pool3"] = dict(params["score_pool3"], kernel=params["score_pool3"]["kernel"] * 3e4)
  y, state = apply({"params": params}, x)
  inter = state["intermediates"]
  feats = inter["backbone"]["__call__"][0]
  p = jax.tree.map(np.asarray, params)
  assert y.shape == (2, 20, 27, 3) and y.dtype == jnp.float32
  for b in range(2):
    score = np.asarray(inter["score_fr"]["__call__"][0][b])
    up = _np_deconvolution(score, p["upscore2"]["kernel"], 2)
    s4 = np.asarray(feats["pool4"][b]) * 0.01 @ p["score_pool4"]["kernel"][0, 0] + p["score_pool4"]["bias"]
    fuse = up + s4[5:5 + up.shape[0], 5:5 + up.shape[1]]  # offsets of voc-fcn8s/deploy.prototxt
    up = _np_deconvolution(fuse, p["upscore_pool4"]["kernel"], 2)
    s3 = np.asarray(feats["pool3"][b]) * 1e-4 @ p["score_pool3"]["kernel"][0, 0] + p["score_pool3"]["bias"]
    fuse = up + s3[9:9 + up.shape[0], 9:9 + up.shape[1]]
    ref = _np_deconvolution(fuse, p["upscore8"]["kernel"], 8)[31:31 + 20, 31:31 + 27]
    np.testing.assert_allclose(y[b], ref, rtol=2e-4, atol=2e-4 * np.abs(ref).max())


def test_fcn_dropout_in_training():
  model = fcn.FCN16s(2, stages=TINY_STAGES, fc_features=16)
  x = jnp.asarray(np.random.default_rng(6).normal(size=(1, 16, 16, 3)), jnp.float32)
  params = random_like(jax.eval_shape(lambda x: model.init(KEYS, x, train=False), x)["params"], seed=7)
  run = jax.jit(lambda x, key, train: model.apply({"params": params}, x, train=train, rngs={"dropout": key}),
                static_argnums=2)
  y_eval = run(x, jax.random.key(0), False)
  y_a, y_b = run(x, jax.random.key(1), True), run(x, jax.random.key(2), True)
  assert y_a.shape == y_eval.shape == (1, 16, 16, 2)
  assert np.all(np.isfinite(y_a)) and not np.allclose(y_a, y_b) and not np.allclose(y_a, y_eval)
