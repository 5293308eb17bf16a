"""U-Net (Ronneberger, Fischer, Brox, MICCAI 2015), same-padded variant.

The contracting path halves the resolution `depth` times; every level is two 3x3 convolutions (each optionally
followed by BatchNorm) and a ReLU. The expanding path upsamples, concatenates the skip connection and applies
two more 3x3 convolutions. With `depth=4, base_features=64` and transposed-convolution upsampling this is the
paper's 31.0 M parameter network, except that the convolutions are 'SAME'-padded so the output has the input's
height and width (the input must be divisible by 2**depth).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2/stride-2 max pooling of [B, H, W, C] (H, W even) as reshape + max.

  Same values as `nn.max_pool(x, (2, 2), (2, 2))`, but its gradient is a plain comparison instead of XLA's
  select-and-scatter, which XLA:CPU lowers about 6x slower (see BENCHMARKS.md).
  """
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class UpConv2x2(nn.Module):
  """Transposed convolution with a 2x2 kernel and stride 2: [B, H, W, Cin] -> [B, 2H, 2W, features].

  Numerically the same map as `nn.ConvTranspose(features, (2, 2), strides=(2, 2))` (tested), written as one
  matmul followed by a depth-to-space reshape. Since the kernel windows do not overlap, every output pixel is
  one input pixel times one kernel tap; XLA:CPU runs the backward pass of the lhs-dilated convolution that
  ConvTranspose lowers to about 15x slower than this matmul.

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
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    b, h, w, _ = x.shape
    # Flax's ConvTranspose (transpose_kernel=False) applies the kernel spatially flipped; match it exactly.
    y = jnp.einsum("bhwc,ijco->bhiwjo", x, kernel[::-1, ::-1])
    return y.reshape(b, 2 * h, 2 * w, self.features) + bias


class ConvBlock(nn.Module):
  """Two (3x3 conv -> [BatchNorm] -> ReLU) layers: [B, H, W, C] -> [B, H, W, features].

  Attributes:
    features: output channels of both convolutions.
    conv: convolution constructor (a partial of `nn.Conv`).
    norm: normalisation constructor, or None for conv bias and no normalisation.
  """

  features: int
  conv: Callable[..., nn.Module]
  norm: Callable[..., nn.Module] | None

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    for _ in range(2):
      x = self.conv(self.features, (3, 3), use_bias=self.norm is None)(x)
      if self.norm is not None:
        x = self.norm(use_running_average=not train)(x)
      x = nn.relu(x)
    return x


class UNet(nn.Module):
  """Same-padded U-Net. Input [B, H, W, C] with H, W divisible by 2**depth; output logits [B, H, W, K] float32.

  Attributes:
    num_classes: K, number of output channels.
    depth: number of 2x downsamplings (the paper's network has 4).
    base_features: channels at full resolution; doubled at every level (paper: 64).
    batch_norm: BatchNorm after every convolution (not in the 2015 paper, standard since).
    dropout_rate: dropout before the bottleneck's convolutions, as at the end of the paper's contracting path.
    upsample: 'transpose' (learned 2x2 up-convolution, as in the paper) or 'bilinear' (resize, then a 3x3
      convolution halving the channels, which is lighter).
    dtype: compute dtype (bfloat16 on accelerators); parameters stay `param_dtype`.
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
    if x.ndim != 4:
      raise ValueError(f"UNet expects images [B, H, W, C], got shape {x.shape}")
    if x.shape[1] % self.size_divisor or x.shape[2] % self.size_divisor:
      raise ValueError(
          f"UNet(depth={self.depth}) needs height and width divisible by {self.size_divisor}, got "
          f"{x.shape[1]}x{x.shape[2]}: crop or pad the input (the input pipeline pads evaluation images).")
    if self.upsample not in ("transpose", "bilinear"):
      raise ValueError(f"UNet.upsample must be 'transpose' or 'bilinear', got {self.upsample!r}")
    conv = functools.partial(nn.Conv, padding="SAME", dtype=self.dtype, param_dtype=self.param_dtype)
    norm = None
    if self.batch_norm:
      norm = functools.partial(nn.BatchNorm, momentum=0.9, epsilon=1e-5, dtype=self.dtype,
                               param_dtype=self.param_dtype)
    block = functools.partial(ConvBlock, conv=conv, norm=norm)

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
        b, h, w, c = x.shape
        x = jax.image.resize(x, (b, 2 * h, 2 * w, c), method="bilinear")
        x = conv(features, (3, 3), name=f"upconv{level}")(x)
      x = jnp.concatenate([skips[level], x], axis=-1)
      x = block(features, name=f"up{level}")(x, train=train)
    logits = nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, param_dtype=self.param_dtype,
                     name="classifier")(x)
    return logits.astype(jnp.float32)
