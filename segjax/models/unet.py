"""U-Net (Ronneberger, Fischer, Brox, MICCAI 2015): a same-padded variant and the paper's unpadded original.

The contracting path halves the resolution `depth` times; every level is two 3x3 convolutions (each optionally
followed by BatchNorm) and a ReLU. The expanding path upsamples, concatenates the skip connection and applies
two more 3x3 convolutions. With `depth=4, base_features=64` and transposed-convolution upsampling this is the
paper's 31.0 M parameter network.

`UNet` 'SAME'-pads the convolutions so the output has the input's height and width (the input must be divisible
by 2**depth). `UNetValid` is the network of the paper's Fig. 1: unpadded convolutions, so every 3x3 convolution
loses a pixel at each border, the skip connections are centre-cropped to the decoder's size, and a 572x572 tile
yields 388x388 logits. Images larger than one tile are segmented with the overlap-tile strategy (mirror-pad by
`input_margin`, tile), which `output_size`, `input_size_for` and `input_margin` support.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.layers import (ConvBlock, Dtype, center_crop, check_divisible, check_images, classifier,
                                  conv_and_block, max_pool_2x2)
from segjax.ops.upsample import Upsample

__all__ = ["UNET_UPSAMPLING", "UNet", "UNetValid", "UpConv2x2", "add_bias", "valid_unet_output_size"]


def add_bias(y: jax.Array, bias: jax.Array) -> jax.Array:
  """`y + bias` added in at least float32 and returned in `y`'s dtype.

  The bias gradient is the output gradient summed over every pixel of the batch. Added in bfloat16, autodiff
  makes that sum a bfloat16 reduce_sum, which XLA:CPU accumulates in bfloat16: once the running sum is a few
  hundred times the terms, they round away (tests/training/test_mixed_precision.py saw a 96% error on a U-Net's output
  bias gradient for 8 x 32 x 32 pixels). In float32 the sum is float32 on every backend.
  """
  dtype = jnp.promote_types(y.dtype, jnp.float32)
  return (y.astype(dtype) + bias.astype(dtype)).astype(y.dtype)


class UpConv2x2(nn.Module):
  """Transposed convolution with a 2x2 kernel and stride 2: [B, H, W, Cin] -> [B, 2H, 2W, features].

  Numerically the same map as `nn.ConvTranspose(features, (2, 2), strides=(2, 2))` (tested). Since the kernel
  windows do not overlap, every output pixel is one input pixel times one kernel tap: the layer is one
  [B*H*W, Cin] x [Cin, 4*features] matmul followed by a depth-to-space rearrangement. XLA:CPU runs the backward
  pass of the lhs-dilated convolution that ConvTranspose lowers to about 15x slower than this matmul, and
  putting the taps in the matmul's last dimension (rather than an einsum to [B, H, 2, W, 2, features]) keeps
  both gradients plain matmuls on contiguous rows, the rearrangement a copy of `features`-long runs
  (fwd + bwd 43.8 -> 17.3 ms at [8, 64, 64, 64] -> 32 on the 2-core CPU).

  Attributes:
    features: output channels.
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cin = x.shape[-1]
    kernel = self.param(
        "kernel", nn.initializers.lecun_normal(in_axis=(0, 1, 2), out_axis=3),
        (2, 2, cin, self.features), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
    b, h, w, _ = x.shape
    # Flax's ConvTranspose (transpose_kernel=False) applies the kernel spatially flipped; match it exactly.
    taps = kernel[::-1, ::-1].transpose(2, 0, 1, 3).reshape(cin, 4 * self.features)  # [Cin, (i, j, o)]
    y = (x.reshape(b * h * w, cin) @ taps).reshape(b, h, w, 2, 2, self.features)
    y = y.transpose(0, 1, 3, 2, 4, 5).reshape(b, 2 * h, 2 * w, self.features)
    return add_bias(y, bias)


def _classifier(num_classes: int, param_dtype: Dtype) -> nn.Module:
  # The 1x1 output convolution runs in float32 whatever the compute dtype (a few FLOPs per pixel): its bias
  # gradient, a sum over every pixel, then accumulates in float32 (see `add_bias`), and the logits are float32.
  return classifier(num_classes, jnp.float32, param_dtype)


UNET_UPSAMPLING = ("transpose", "bilinear", "nearest", "bed_of_nails", "learned")


class UNet(nn.Module):
  """Same-padded U-Net. Input [B, H, W, C] with H, W divisible by 2**depth; output logits [B, H, W, K] float32.

  Attributes:
    num_classes: K, number of output channels.
    depth: number of 2x downsamplings (the paper's network has 4).
    base_features: channels at full resolution; doubled at every level (paper: 64).
    batch_norm: BatchNorm after every convolution (not in the 2015 paper, standard since).
    dropout_rate: dropout before the bottleneck's convolutions, as at the end of the paper's contracting path.
    upsample: 'transpose' (learned 2x2 up-convolution, as in the paper), or a channel-preserving
      `segjax.ops.Upsample` method ('bilinear', 'nearest', 'bed_of_nails', 'learned') followed by a 3x3
      convolution halving the channels (lighter). Index unpooling needs the decoder widths to mirror the
      encoder's: it is SegNet's and DeconvNet's decoder.
    dtype: compute dtype (bfloat16 on accelerators) of every layer but the float32 1x1 classifier; parameters
      stay `param_dtype`.
    param_dtype: parameter dtype.
  """

  num_classes: int
  depth: int = 4
  base_features: int = 64
  batch_norm: bool = True
  dropout_rate: float = 0.0
  upsample: str = "transpose"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @property
  def size_divisor(self) -> int:
    return 2**self.depth

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    check_images(x, "UNet")
    check_divisible(x, f"UNet(depth={self.depth})", self.size_divisor)
    if self.upsample not in UNET_UPSAMPLING:
      raise ValueError(f"UNet.upsample must be one of {UNET_UPSAMPLING}, got {self.upsample!r}")
    conv, block = conv_and_block("SAME", self.batch_norm, self.dtype, self.param_dtype)

    x = x.astype(self.dtype)
    skips = []
    for level in range(self.depth):
      x = block(self.base_features * 2**level, name=f"down{level}")(x, train=train)
      skips.append(x)
      x = max_pool_2x2(x)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = block(self.base_features * 2**self.depth, name="bottleneck")(x, train=train)
    for level in reversed(range(self.depth)):
      features = self.base_features * 2**level
      if self.upsample == "transpose":
        x = UpConv2x2(features, dtype=self.dtype, param_dtype=self.param_dtype, name=f"upconv{level}")(x)
      else:
        x = Upsample(self.upsample, 2, dtype=self.dtype, param_dtype=self.param_dtype, name=f"upsample{level}")(x)
        x = conv(features, (3, 3), name=f"upconv{level}")(x)
      x = jnp.concatenate([skips[level], x], axis=-1)
      x = block(features, name=f"up{level}")(x, train=train)
    return _classifier(self.num_classes, self.param_dtype)(x)


def valid_unet_output_size(size: int, depth: int) -> int | None:
  """Output side of the unpadded U-Net for an input side, or None when `size` is not a valid input.

  Every level of the contracting path loses 4 pixels to two unpadded 3x3 convolutions and then halves, which
  needs an even map; the bottleneck loses 4 more; every level of the expanding path doubles and loses 4.
  """
  s = size
  for _ in range(depth):
    s -= 4
    if s < 2 or s % 2:
      return None
    s //= 2
  s -= 4
  if s < 1:
    return None
  for _ in range(depth):
    s = 2 * s - 4
    if s < 1:
      return None
  return s


class UNetValid(nn.Module):
  """The unpadded U-Net of the paper's Fig. 1: [B, H, W, C] -> logits [B, output_size(H), output_size(W), K].

  Differences from `UNet`: 'VALID' 3x3 convolutions, the skip maps are centre-cropped to the decoder's size
  before the concatenation, and there is no BatchNorm by default (the 2015 network has none). The parameters
  have the same names and shapes as `UNet`'s (padding adds none), so the two can load each other's weights.

  Only some sizes are valid: every map before a pooling must be even. For depth 4 the valid sides are
  16 t + 60 for t >= 8 (188, 204, ..., 572, ...), giving 16 t - 124 output pixels; `input_margin` pixels are
  lost at each border. Train on valid crops with the labels centre-cropped to the logits; segment a large
  image by mirror-padding it by `input_margin` and tiling (the paper's overlap-tile strategy, Fig. 2).

  Dropout follows the authors' Caffe release (phseg_v5-train.prototxt, layers dropout_d3c and dropout_d4c,
  ratio 0.5), which implements the paper's "drop-out layers at the end of the contracting path": after the
  deepest encoder level (its output feeds both the pooling and the skip) and after the bottleneck. The up-conv
  has no ReLU, as in the paper's text (the release adds one; it changes no parameter).

  Attributes:
    num_classes: K, number of output channels.
    depth: number of 2x2 poolings (paper: 4).
    base_features: channels at full resolution, doubled at every level (paper: 64).
    batch_norm: BatchNorm after every 3x3 convolution (not in the paper).
    dropout_rate: rate of the two dropout layers at the end of the contracting path (paper: 0.5).
    dtype: compute dtype of every layer but the float32 1x1 classifier; parameters stay `param_dtype`.
    param_dtype: parameter dtype.
  """

  num_classes: int
  depth: int = 4
  base_features: int = 64
  batch_norm: bool = False
  dropout_rate: float = 0.5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @property
  def input_margin(self) -> int:
    """Pixels lost at each border: (input - output) / 2, the same for every valid input (92 for depth 4)."""
    return 6 * 2**self.depth - 4

  @property
  def min_input_size(self) -> int:
    """The smallest valid input side (188 for depth 4)."""
    return self.input_size_for(1)

  def _valid_input(self, t: int) -> int:
    # Input side whose map entering the bottleneck has side t: undo `depth` times (pool, two convs).
    return 2**self.depth * t + 4 * (2**self.depth - 1)

  def output_size(self, size: int) -> int:
    """Output side for input side `size`.

    Raises:
      ValueError: `size` is not a valid input, naming the nearest valid sizes.
    """
    out = valid_unet_output_size(size, self.depth)
    if out is not None:
      return out
    lower, upper = None, None
    t = 1
    while True:
      candidate = self._valid_input(t)
      if valid_unet_output_size(candidate, self.depth) is not None:
        if candidate < size:
          lower = candidate
        else:
          upper = candidate
          break
      t += 1
    nearest = f"{lower} or {upper}" if lower is not None else f"{upper} (the smallest valid size)"
    raise ValueError(
        f"UNetValid(depth={self.depth}) cannot take an input side of {size}: every map before a 2x2 pooling "
        f"must be even and positive. Nearest valid sizes: {nearest}; `input_size_for(n)` gives the smallest "
        f"input producing n output pixels.")

  def input_size_for(self, min_output: int) -> int:
    """The smallest valid input side whose output side is at least `min_output`."""
    t = 1
    while True:
      size = self._valid_input(t)
      out = valid_unet_output_size(size, self.depth)
      if out is not None and out >= min_output:
        return size
      t += 1

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    check_images(x, "UNetValid")
    if self.depth < 1:
      raise ValueError(f"UNetValid.depth must be >= 1, got {self.depth}")
    for side in x.shape[1:3]:
      self.output_size(side)  # raises, naming the nearest valid sizes
    _, block = conv_and_block("VALID", self.batch_norm, self.dtype, self.param_dtype)

    x = x.astype(self.dtype)
    skips = []
    for level in range(self.depth):
      x = block(self.base_features * 2**level, name=f"down{level}")(x, train=train)
      if level == self.depth - 1:
        x = nn.Dropout(self.dropout_rate, deterministic=not train, name="dropout_encoder")(x)
      skips.append(x)
      x = max_pool_2x2(x)
    x = block(self.base_features * 2**self.depth, name="bottleneck")(x, train=train)
    x = nn.Dropout(self.dropout_rate, deterministic=not train, name="dropout_bottleneck")(x)
    for level in reversed(range(self.depth)):
      features = self.base_features * 2**level
      x = UpConv2x2(features, dtype=self.dtype, param_dtype=self.param_dtype, name=f"upconv{level}")(x)
      x = jnp.concatenate([center_crop(skips[level], x.shape[1:3]), x], axis=-1)
      x = block(features, name=f"up{level}")(x, train=train)
    return _classifier(self.num_classes, self.param_dtype)(x)
