"""DeepLab-LargeFOV: the paper's parameter count, output stride 8 with Caffe's pooling geometry, and its layers
against numpy convolutions.

Full-size networks are only traced abstractly (`jax.eval_shape`); numerics run on narrow variants.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax.models import deeplab
from tests.models.common import (KEYS, TINY_STAGES, VGG16_CONV_PARAMS, abstract_intermediates,
                                 assert_config_fields_and_float32, conv_param_count, count_params, np_conv, np_resize,
                                 random_like)


def _caffe_pool(n, k, s, p):
  return math.ceil((n + 2 * p - k) / s) + 1  # pooling_layer.cpp (no clipping needed for these sizes)


def test_deeplab_parameter_count_is_the_papers_20_5m():
  # DeepLab-LargeFOV prototxt: VGG16 convs, fc6 3x3x512x1024, fc7 1x1x1024x1024, fc8 1x1x1024x21.
  expected = (VGG16_CONV_PARAMS + conv_param_count(512, 1024, 3) + conv_param_count(1024, 1024, 1)
              + conv_param_count(1024, 21, 1))
  counts = {count_params(abstract_intermediates(deeplab.DeepLabLargeFOV(21), (1, *hw, 3))[0]["params"])
            for hw in [(1, 1), (32, 48), (321, 321)]}
  assert counts == {expected} and expected == 20_505_429
  assert round(expected / 1e6, 1) == 20.5  # Chen et al. 2015, Table 2: DeepLab-CRF-LargeFOV, 20.5M


@pytest.mark.parametrize("hw", [(321, 321), (32, 48), (40, 56), (1, 1), (33, 47)])
def test_deeplab_output_stride_8_and_input_size(hw):
  _, out, inter = abstract_intermediates(deeplab.DeepLabLargeFOV(21), (2, *hw, 3))
  assert out.shape == (2, *hw, 21) and out.dtype == jnp.float32
  # Three 3x3/2 pad-1 Caffe poolings (pool4, pool5: 3x3/1 pad 1 keep the size); 321 -> 41 as in the paper.
  expected = [n for n in hw]
  for _ in range(3):
    expected = [_caffe_pool(n, 3, 2, 1) for n in expected]
  assert inter["fc8"]["__call__"][0].shape == (2, *expected, 21)
  if hw == (321, 321):
    assert expected == [41, 41]


def test_deeplab_layers_match_numpy_convolutions():
  model = deeplab.DeepLabLargeFOV(3, stages=TINY_STAGES, fc_features=8)
  x = np.random.default_rng(1).normal(size=(1, 33, 41, 3)).astype(np.float32)
  params = random_like(abstract_intermediates(model, x.shape)[0]["params"], seed=2)
  run = jax.jit(lambda x, train: model.apply({"params": params}, x, train=train, rngs={"dropout": KEYS["dropout"]},
                                             capture_intermediates=True, mutable=["intermediates"]),
                static_argnums=1)
  y, state = run(x, False)
  inter = jax.tree.map(np.asarray, state["intermediates"])
  p = jax.tree.map(np.asarray, params)
  feats = inter["backbone"]["__call__"][0]
  assert [feats[f"pool{s}"].shape[1:3] for s in range(1, 6)] == [(17, 21), (9, 11), (5, 6), (5, 6), (5, 6)]
  conv5_1 = inter["backbone"]["conv5_1"]["__call__"][0][0]  # dilation 2, padding 2
  np.testing.assert_allclose(conv5_1, np_conv(feats["pool4"][0], **p["backbone"]["conv5_1"], dilation=2, pad=2),
                             rtol=1e-4, atol=1e-4)
  fc6 = inter["fc6"]["__call__"][0][0]  # 3x3, dilation 12, padding 12
  np.testing.assert_allclose(fc6, np_conv(feats["pool5"][0], **p["fc6"], dilation=12, pad=12), rtol=1e-4,
                             atol=1e-4)
  fc8 = np_conv(np.maximum(inter["fc7"]["__call__"][0][0], 0), **p["fc8"], dilation=1, pad=0)
  np.testing.assert_allclose(y[0], np_resize(fc8, (33, 41), 8, 0), rtol=1e-4, atol=1e-4)
  y_train, _ = run(x, True)
  assert y_train.shape == y.shape and not np.allclose(y_train, y)  # dropout 0.5 after fc6 and fc7


def test_fields_are_config_values_and_logits_float32():
  assert_config_fields_and_float32(deeplab.DeepLabLargeFOV)
