"""Small fully convolutional networks "with downsampling and upsampling inside the network".

Teaching models for the design the Stanford CS231n lecture on detection and segmentation (Lecture 11, 2017)
sketches: a fully convolutional network that downsamples by pooling and upsamples back inside the network,
first with fixed upsampling, then with skip connections and learned (transposed-convolution) upsampling, after
FCN (Long, Shelhamer, Darrell, "Fully Convolutional Networks for Semantic Segmentation", CVPR 2015) and U-Net
(Ronneberger et al., MICCAI 2015).

The lecture draws these networks without a layer table, so the sizes here are segjax's choice, kept small and
alike so the three differ only in their decoder. All share one encoder: three stages of two 3x3 convolutions
(+ BatchNorm) + ReLU with `base_features` x (1, 2, 4) channels, each followed by 2x2 max pooling, to 1/8 of the
input, and one more such block with 8 x `base_features` channels at 1/8.

- `FCNNearest`: a 1x1 classifier at 1/8 and nearest-neighbour upsampling by 8 (FCN-32s' single-step
  upsampling, with nearest instead of bilinear to show the blockiness the lecture points out).
- `FCNSkipConcat`: three times: upsample 2x (nearest or bilinear), concatenate the encoder features of that
  resolution, two 3x3 convolutions (U-Net's decoder, with fixed instead of learned upsampling); 1x1 classifier.
- `FCNTransposedSkip`: FCN-8s' decoder in small: class scores at 1/8, then three times a 2x transposed
  convolution of the scores (kernel 4, stride 2, initialised to bilinear interpolation as in FCN, or randomly)
  plus the 1x1 class scores of the encoder features at the new resolution. FCN-8s fuses two skips and then
  upsamples 8x in one fixed step; here every one of the three poolings gets a skip, so the last step needs no
  fixed upsampling.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.layers import Dtype, check_divisible, check_images, classifier, conv_and_block, max_pool_2x2
from segjax.ops.conv import Conv
from segjax.ops.upsample import Upsample

NUM_POOLINGS = 3


class SmallEncoder(nn.Module):
  """[B, H, W, C] -> features [B, H/8, W/8, 8*base] and skips at 1, 1/2, 1/4 (base, 2*base, 4*base channels).

  Attributes:
    base_features: channels of the first stage; doubled at every pooling.
    batch_norm: BatchNorm after every convolution (convolutions then have no bias).
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  base_features: int = 32
  batch_norm: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, list[jax.Array]]:
    _, block = conv_and_block("SAME", self.batch_norm, self.dtype, self.param_dtype)
    skips = []
    for stage in range(NUM_POOLINGS):
      x = block(self.base_features * 2**stage, name=f"stage{stage}")(x, train=train)
      skips.append(x)
      x = max_pool_2x2(x)
    x = block(self.base_features * 2**NUM_POOLINGS, name="stage3")(x, train=train)
    return x, skips


def _encode(model: nn.Module, x: jax.Array, *, train: bool) -> tuple[jax.Array, list[jax.Array]]:
  """Checks the input and runs the shared `SmallEncoder` as `model`'s submodule "encoder".

  Call it inside `model`'s `nn.compact` method, with the fields every network here has.
  """
  name = type(model).__name__
  check_images(x, name)
  check_divisible(x, name, 2**NUM_POOLINGS)
  return SmallEncoder(model.base_features, model.batch_norm, model.dtype, model.param_dtype,
                      name="encoder")(x.astype(model.dtype), train=train)


class FCNNearest(nn.Module):
  """Encoder to 1/8, 1x1 class scores, nearest-neighbour upsampling x8. [B,H,W,C] -> [B,H,W,K] float32.

  Attributes:
    num_classes: K.
    base_features: encoder width at full resolution (x1, x2, x4, x8 at 1, 1/2, 1/4, 1/8).
    batch_norm: BatchNorm after every 3x3 convolution.
    dtype: compute dtype; logits are returned in float32.
    param_dtype: parameter dtype.
  """

  num_classes: int
  base_features: int = 32
  batch_norm: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @property
  def size_divisor(self) -> int:
    return 2**NUM_POOLINGS

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x, _ = _encode(self, x, train=train)
    scores = classifier(self.num_classes, self.dtype, self.param_dtype)(x)
    return Upsample("nearest", 2**NUM_POOLINGS, dtype=self.dtype)(scores).astype(jnp.float32)


class FCNSkipConcat(nn.Module):
  """Encoder to 1/8; three times upsample 2x, concatenate the skip, two 3x3 convs; 1x1 classifier.

  [B, H, W, C] -> [B, H, W, K] float32.

  Attributes:
    num_classes: K.
    base_features: encoder width at full resolution; each decoder block has its skip's width.
    batch_norm: BatchNorm after every 3x3 convolution.
    upsample: "nearest" or "bilinear" (fixed, parameter-free 2x upsampling).
    dtype: compute dtype; logits are returned in float32.
    param_dtype: parameter dtype.
  """

  num_classes: int
  base_features: int = 32
  batch_norm: bool = True
  upsample: str = "nearest"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @property
  def size_divisor(self) -> int:
    return 2**NUM_POOLINGS

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    if self.upsample not in ("nearest", "bilinear"):
      raise ValueError(f"FCNSkipConcat.upsample must be 'nearest' or 'bilinear', got {self.upsample!r}")
    x, skips = _encode(self, x, train=train)
    _, block = conv_and_block("SAME", self.batch_norm, self.dtype, self.param_dtype)
    for stage in reversed(range(NUM_POOLINGS)):
      x = Upsample(self.upsample, 2, dtype=self.dtype)(x)
      x = jnp.concatenate([skips[stage], x], axis=-1)
      x = block(self.base_features * 2**stage, name=f"decoder{stage}")(x, train=train)
    return classifier(self.num_classes, self.dtype, self.param_dtype)(x).astype(jnp.float32)


class FCNTransposedSkip(nn.Module):
  """Encoder to 1/8; class scores upsampled 2x by transposed convolutions, plus skip scores, three times.

  [B, H, W, C] -> [B, H, W, K] float32.

  Attributes:
    num_classes: K.
    base_features: encoder width at full resolution.
    batch_norm: BatchNorm after every 3x3 convolution.
    upsample: "transpose_bilinear" (4x4/2 transposed convolution K -> K without bias, initialised to bilinear
      interpolation: FCN's `upscore` layers) or "transpose" (the same with a bias and random init).
    dtype: compute dtype; logits are returned in float32.
    param_dtype: parameter dtype.
  """

  num_classes: int
  base_features: int = 32
  batch_norm: bool = True
  upsample: str = "transpose_bilinear"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @property
  def size_divisor(self) -> int:
    return 2**NUM_POOLINGS

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    if self.upsample not in ("transpose", "transpose_bilinear"):
      raise ValueError(f"FCNTransposedSkip.upsample must be 'transpose' or 'transpose_bilinear', got "
                       f"{self.upsample!r}")
    x, skips = _encode(self, x, train=train)
    score = functools.partial(Conv, self.num_classes, (1, 1), dtype=self.dtype, param_dtype=self.param_dtype)
    scores = score(name="score3")(x)
    for stage in reversed(range(NUM_POOLINGS)):
      scores = Upsample(self.upsample, 2, dtype=self.dtype, param_dtype=self.param_dtype,
                        name=f"upscore{stage}")(scores)
      # FCN's fusion: element-wise sum with the class scores predicted from the finer encoder features.
      scores = scores + score(name=f"score{stage}")(skips[stage])
    return scores.astype(jnp.float32)

