"""Fully convolutional networks FCN-32s, FCN-16s and FCN-8s (Long, Shelhamer, Darrell, "Fully Convolutional
Networks for Semantic Segmentation", CVPR 2015; Shelhamer, Long, Darrell, TPAMI 2016).

VGG16 with its classifier turned into convolutions (fc6: 7x7, 4096; fc7: 1x1, 4096; each followed by ReLU and
dropout 0.5) and a 1x1 `score_fr` to the classes, at stride 32. FCN-32s upsamples those scores 32x; FCN-16s
first upsamples them 2x and adds a 1x1 `score_pool4` of pool4, then upsamples 16x; FCN-8s also adds
`score_pool3` of pool3 before a final 8x upsampling. Every upsampling is a transposed convolution (Caffe's
"Deconvolution") with kernel 2*stride, stride `stride`, no bias, set to bilinear interpolation.

The geometry is the reference Caffe nets' (fcn.berkeleyvision.org, voc-fcn{32,16,8}s/net.py), so an input of
any size gives scores of exactly that size: conv1_1 pads by 100, pooling rounds up, fc6 is unpadded, and the
maps are aligned by the crop offsets Caffe's `coord_map` computes (printed in voc-fcn8s/deploy.prototxt):
score_pool4 at 5 and score_pool3 at 9 into the upsampled scores, the final scores at 19 (32s), 27 (16s) or 31
(8s) into the last upsampling. As there, the score layers start at zero (so the initial logits are 0) and the
upsampling filters are fixed (`lr_mult: 0`); `learn_upsampling=True` makes them trainable parameters starting
at bilinear, as the CVPR paper's learned 2x upsampling (Sec. 4.2). The TPAMI paper's "at-once" FCN-8s scales
pool4 by 0.01 and pool3 by 0.0001 before scoring them (voc-fcn8s-atonce/net.py): `pool4_scale`, `pool3_scale`
(default 1, the staged reference nets).

Parameter names follow the reference: `backbone/conv1_1` ... `backbone/conv5_3`, `fc6`, `fc7`, `score_fr`,
`score_pool4`, `score_pool3` and, when learned, `upscore`, `upscore16`, `upscore2`, `upscore_pool4`, `upscore8`
(kernels [k, k, K, K], Caffe's [K_in, K_out, k, k] transposed). With 21 classes FCN-8s has 134,362,751
parameters (134,489,759 with learned upsampling), the "134M" of the papers' Table 1.

The conv1_1 padding makes the network expensive at small inputs (a 32x32 image is a 230x230 map at conv1);
that is the price of the reference geometry.
"""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from segjax.models.backbones.vgg import VGG16, VGG16_STAGES, conv_init
from segjax.models.layers import Dtype, check_images, crop, fc_layers
from segjax.ops.conv import Conv
from segjax.ops.upsample import bilinear_kernel, transposed_conv

# Offsets of the reference nets' Crop layers (voc-fcn8s/deploy.prototxt; 19 and 27 from the 32s/16s nets'
# coord_map): FCN-8s aligns score_pool4 at 5 and score_pool3 at 9, and crops the output at 31 (8s), 27 (16s) or
# 19 (32s). tests/models/test_fcn.py re-derives them from the layer table.
POOL4_OFFSET = 5
POOL3_OFFSET = 9
OUTPUT_OFFSET = {32: 19, 16: 27, 8: 31}


def deconvolution(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
  """Caffe's unpadded Deconvolution: [B, H, W, Ci] -> [B, (H + 1) * stride, (W + 1) * stride, Co].

  Input pixel i adds x[i] * kernel[t] to output position i * stride + t, for t < 2 * stride = kernel side.
  `segjax.ops.upsample.transposed_conv` computes the same map cropped to stride x the input; padding the input
  with one zero row and column on each side and cropping differently recovers the full output.
  """
  _, h, w, _ = x.shape
  f, c = stride, stride // 2
  y = transposed_conv(jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))), kernel, f)
  # transposed_conv's output position o is the padded input's full output o + c, i.e. x's full output o + c - f.
  return y[:, f - c:f - c + (h + 1) * f, f - c:f - c + (w + 1) * f]


def bilinear_filter_1d(stride: int) -> np.ndarray:
  """One axis of FCN's bilinear filter of side 2*stride (`upsample_filt` in surgery.py is its outer product)."""
  t = np.arange(2 * stride, dtype=np.float64)
  return 1.0 - np.abs(t - (stride - 0.5)) / stride


def bilinear_deconvolution_matrix(n: int, stride: int) -> np.ndarray:
  """[(n + 1) * stride, n] matrix of `deconvolution` along one axis with the bilinear filter, per channel."""
  g = bilinear_filter_1d(stride)
  m = np.zeros(((n + 1) * stride, n), np.float64)
  for i in range(n):
    m[i * stride:i * stride + 2 * stride, i] = g
  return m


def _crop(x: jax.Array, offset: int, height: int, width: int) -> jax.Array:
  # Caffe's Crop layer with one offset for both axes.
  return crop(x, offset, offset, height, width)


class Upscore(nn.Module):
  """FCN's bilinear "Deconvolution" (kernel 2*stride, no bias): [B, H, W, K] -> [B, (H+1)*stride, (W+1)*stride, K].

  Attributes:
    stride: upsampling factor.
    learnable: the filter is a parameter `kernel` [2s, 2s, K, K] initialised to FCN's bilinear filter (diagonal
      over classes); otherwise it is that constant filter (the reference nets' `lr_mult: 0`).
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  stride: int
  learnable: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k, channels = 2 * self.stride, x.shape[-1]
    x = x.astype(self.dtype)
    if self.learnable:
      kernel = self.param("kernel", lambda _, shape, dtype: jnp.asarray(bilinear_kernel(k, channels), dtype),
                          (k, k, channels, channels), self.param_dtype)
      return deconvolution(x, kernel.astype(self.dtype), self.stride)
    # The fixed filter is diagonal over classes and separable, so it is two small matmuls, not a K x K kernel
    # (which for 1000 classes and stride 32 would be 4e9 zeros).
    mh = jnp.asarray(bilinear_deconvolution_matrix(x.shape[1], self.stride), self.dtype)
    mw = jnp.asarray(bilinear_deconvolution_matrix(x.shape[2], self.stride), self.dtype)
    return jnp.einsum("pw,bowc->bopc", mw, jnp.einsum("oh,bhwc->bowc", mh, x))


class _FCN(nn.Module):
  """Shared body of FCN-32s/16s/8s; the subclasses set `output_stride` (32, 16, 8)."""

  num_classes: int
  learn_upsampling: bool = False
  dropout_rate: float = 0.5
  fc_features: int = 4096
  stages: tuple[tuple[int, int], ...] = VGG16_STAGES
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  output_stride: ClassVar[int] = 32

  def _score(self, x: jax.Array, name: str) -> jax.Array:
    # Zero-initialised as in the reference (its Caffe default filler), so skips start as no-ops.
    return Conv(self.num_classes, (1, 1), kernel_init=nn.initializers.zeros, dtype=self.dtype,
                param_dtype=self.param_dtype, name=name)(x)

  def _upscore(self, x: jax.Array, stride: int, name: str) -> jax.Array:
    return Upscore(stride, self.learn_upsampling, dtype=self.dtype, param_dtype=self.param_dtype, name=name)(x)

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    check_images(x, type(self).__name__)
    _, h, w, _ = x.shape
    feats = VGG16(stages=self.stages, ceil_mode=True, conv1_padding=100, dtype=self.dtype,
                  param_dtype=self.param_dtype, name="backbone")(x, train=train)
    y = fc_layers(feats["pool5"], (("fc6", 7, 1), ("fc7", 1, 1)), self.fc_features, train=train,
                  dropout_rate=self.dropout_rate, kernel_init=conv_init, padding="VALID", dtype=self.dtype,
                  param_dtype=self.param_dtype)
    score = self._score(y, "score_fr")

    if self.output_stride == 32:
      return _crop(self._upscore(score, 32, "upscore"), OUTPUT_OFFSET[32], h, w).astype(jnp.float32)
    up = self._upscore(score, 2, "upscore2")
    pool4 = self._score(feats["pool4"] * getattr(self, "pool4_scale"), "score_pool4")
    fuse = up + _crop(pool4, POOL4_OFFSET, up.shape[1], up.shape[2])
    if self.output_stride == 16:
      return _crop(self._upscore(fuse, 16, "upscore16"), OUTPUT_OFFSET[16], h, w).astype(jnp.float32)
    up = self._upscore(fuse, 2, "upscore_pool4")
    pool3 = self._score(feats["pool3"] * getattr(self, "pool3_scale"), "score_pool3")
    fuse = up + _crop(pool3, POOL3_OFFSET, up.shape[1], up.shape[2])
    return _crop(self._upscore(fuse, 8, "upscore8"), OUTPUT_OFFSET[8], h, w).astype(jnp.float32)


class FCN32s(_FCN):
  """FCN-32s: VGG16 scores at stride 32, upsampled 32x. [B, H, W, C] (any H, W) -> float32 [B, H, W, K].

  Attributes:
    num_classes: K.
    learn_upsampling: the upsampling filter is a trainable parameter (starting at bilinear) instead of fixed.
    dropout_rate: dropout after fc6 and fc7 (0.5).
    fc_features: channels of fc6 and fc7 (4096); smaller only for tests.
    stages: VGG16's layer table (`VGG16_STAGES`); narrower only for tests.
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  output_stride: ClassVar[int] = 32


class FCN16s(_FCN):
  """FCN-16s: FCN-32s's scores upsampled 2x plus pool4's, upsampled 16x. Any H, W -> float32 [B, H, W, K].

  Attributes: those of `FCN32s`, and
    pool4_scale: pool4 is multiplied by this before `score_pool4` (1; the TPAMI at-once nets use 0.01).
  """

  pool4_scale: float = 1.0

  output_stride: ClassVar[int] = 16


class FCN8s(_FCN):
  """FCN-8s: FCN-16s's fused scores upsampled 2x plus pool3's, upsampled 8x. Any H, W -> float32 [B, H, W, K].

  Attributes: those of `FCN32s`, and
    pool4_scale: pool4 is multiplied by this before `score_pool4` (1; at-once FCN-8s: 0.01).
    pool3_scale: pool3 is multiplied by this before `score_pool3` (1; at-once FCN-8s: 0.0001).
  """

  pool4_scale: float = 1.0
  pool3_scale: float = 1.0

  output_stride: ClassVar[int] = 8
