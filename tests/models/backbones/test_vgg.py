"""VGG16 backbone: published parameter counts, stage outputs, dilated stages and Caffe/PyTorch max pooling
against numpy loops.

Full-size networks are only traced abstractly (`jax.eval_shape`); numerics run on narrow variants.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax.models.backbones import vgg
from tests.models.common import KEYS, abstract_apply, conv_param_count, count_params, np_conv, random_like


# torchvision's classifier (docs: vgg16 138,357,544, vgg16_bn 138,365,992 parameters), written out:
# fc6 25088 -> 4096, fc7 4096 -> 4096, fc8 4096 -> 1000, all with biases.
TORCHVISION_CLASSIFIER = (25088 * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 * 1000 + 1000)


def test_vgg16_parameter_counts_match_torchvision():
  # Conv layers of Simonyan & Zisserman's configuration D: 3x3 convs with biases, channels from Table 1.
  widths = [3, 64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
  conv_total = sum(conv_param_count(a, b) for a, b in zip(widths[:-1], widths[1:]))
  assert conv_total == 14_714_688 == 138_357_544 - TORCHVISION_CLASSIFIER
  variables, out = abstract_apply(vgg.VGG16(), (1, 64, 64, 3))
  assert count_params(variables["params"]) == conv_total
  names = [f"conv{s}_{i}" for s, (_, n) in enumerate(vgg.VGG16_STAGES, 1) for i in range(1, n + 1)]
  assert sorted(variables["params"]) == sorted(names)
  assert variables["params"]["conv4_1"]["kernel"].shape == (3, 3, 256, 512)
  # VGG16-BN: same convs (torchvision keeps their biases) plus a BN scale and offset per channel.
  variables, _ = abstract_apply(vgg.VGG16(batch_norm=True), (1, 64, 64, 3))
  assert count_params(variables["params"]) == 138_365_992 - TORCHVISION_CLASSIFIER
  assert count_params(variables["batch_stats"]) == 2 * sum(widths[1:])


def test_vgg16_stage_outputs():
  _, out = abstract_apply(vgg.VGG16(), (2, 64, 96, 3))
  for s, (c, _) in enumerate(vgg.VGG16_STAGES, 1):
    assert out[f"conv{s}"].shape == (2, 64 >> (s - 1), 96 >> (s - 1), c)
    assert out[f"pool{s}"].shape == (2, 64 >> s, 96 >> s, c)


def test_vgg_stage_matches_numpy_dilated_convolutions():
  class Stage(nn.Module):
    @nn.compact
    def __call__(self, x):
      return vgg.vgg_stage(x, 3, 4, 2, train=False, dilation=2)

  x = np.random.default_rng(0).normal(size=(1, 9, 8, 3)).astype(np.float32)
  params = random_like(jax.eval_shape(lambda: Stage().init(KEYS, x))["params"])
  assert sorted(params) == ["conv3_1", "conv3_2"]
  y = Stage().apply({"params": params}, x)
  ref = x[0]
  for name in ("conv3_1", "conv3_2"):
    p = jax.tree.map(np.asarray, params[name])
    ref = np.maximum(np_conv(ref, p["kernel"], p["bias"], dilation=2, pad=2), 0)
  np.testing.assert_allclose(y[0], ref, rtol=1e-4, atol=1e-5)


def _np_max_pool(x, k, s, p, ceil_mode):
  """Caffe's pooling_layer.cpp (and PyTorch's) max pooling of [H, W, C]: output size, then clipped windows."""
  def size(n):
    o = (int(np.ceil((n + 2 * p - k) / s)) if ceil_mode else (n + 2 * p - k) // s) + 1
    return o - 1 if ceil_mode and (o - 1) * s >= n + p else o
  h, w, _ = x.shape
  out = np.zeros((size(h), size(w), x.shape[-1]), x.dtype)
  for i in range(out.shape[0]):
    for j in range(out.shape[1]):
      h0, w0 = i * s - p, j * s - p
      out[i, j] = x[max(h0, 0):min(h0 + k, h), max(w0, 0):min(w0 + k, w)].max(axis=(0, 1))
  return out


@pytest.mark.parametrize("k,s,p,ceil_mode", [(2, 2, 0, False), (2, 2, 0, True), (3, 2, 1, True), (3, 1, 1, True),
                                             (3, 2, 0, False)])
@pytest.mark.parametrize("hw", [(7, 10), (9, 9)])
def test_max_pool_matches_caffe_loop(k, s, p, ceil_mode, hw):
  x = np.random.default_rng(1).normal(size=(1, *hw, 2)).astype(np.float32)
  np.testing.assert_array_equal(vgg.max_pool(jnp.asarray(x), k, s, p, ceil_mode)[0],
                                _np_max_pool(x[0], k, s, p, ceil_mode))


def test_pooled_sizes_of_reference_nets():
  # DeepLab's prototxt comment: a 321 input pools (3x3/2, pad 1, ceil) to 161, 81, 41. FCN's 500x500 PASCAL
  # images pool (2x2/2, ceil) from 698 (= 500 + 2*100 - 2) to 349, 175, 88, 44, 22.
  n, sizes = 321, []
  for _ in range(3):
    n = vgg.pooled_size(n, 3, 2, 1, ceil_mode=True)
    sizes.append(n)
  assert sizes == [161, 81, 41] and vgg.pooled_size(41, 3, 1, 1, ceil_mode=True) == 41
  n, sizes = 698, []
  for _ in range(5):
    n = vgg.pooled_size(n, 2, 2, 0, ceil_mode=True)
    sizes.append(n)
  assert sizes == [349, 175, 88, 44, 22]
