"""Blocks and helpers that several model families share.

A model file takes these from here (or from `segjax.ops`, or a backbone), never from a sibling model file, so
each family can change without touching the others. Nothing here creates a parameter name of its own: every
layer is named by the caller, so moving a block here leaves the models' parameter trees as they were.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.ops.conv import Conv
from segjax.ops.norm import BatchNorm
from segjax.ops.upsample import resize_bilinear

Dtype = Any


def check_images(x: jax.Array, name: str) -> None:
  """Raises ValueError unless `x` is a batch of images [B, H, W, C]; `name` is the model named in the message."""
  if x.ndim != 4:
    raise ValueError(f"{name} expects images [B, H, W, C], got shape {x.shape}")


def check_divisible(x: jax.Array, name: str, divisor: int, why: str = "") -> None:
  """Raises ValueError unless the height and width of [B, H, W, C] `x` are multiples of `divisor`.

  Args:
    x: the input images.
    name: the model, as the message names it.
    divisor: the size divisor (2**number of 2x poolings).
    why: an optional parenthesised reason put after the divisor, e.g. " (five 2x2 poolings)".
  """
  if x.shape[1] % divisor or x.shape[2] % divisor:
    raise ValueError(
        f"{name} needs height and width divisible by {divisor}{why}, got {x.shape[1]}x{x.shape[2]}: crop or "
        "pad the input (the input pipeline pads evaluation images).")


def batch_norm_partial(dtype: Dtype, param_dtype: Dtype, *, train: bool | None = None,
                       **kwargs: Any) -> Callable[..., nn.Module]:
  """`segjax.ops.BatchNorm` with the settings every model here uses (momentum 0.9, epsilon 1e-5: PyTorch's).

  Args:
    dtype: compute dtype.
    param_dtype: parameter dtype.
    train: if given, fixes `use_running_average=not train`; otherwise the caller passes it per layer.
    **kwargs: further fixed BatchNorm arguments.
  """
  if train is not None:
    kwargs["use_running_average"] = not train
  return functools.partial(BatchNorm, momentum=0.9, epsilon=1e-5, dtype=dtype, param_dtype=param_dtype, **kwargs)


def symmetric_padding(kernel: int, dilation: int = 1) -> tuple[tuple[int, int], tuple[int, int]]:
  """PyTorch's symmetric padding that keeps a stride-1 convolution's size: dilation * (kernel - 1) / 2 a side.

  Explicit rather than XLA's 'SAME', which pads a strided convolution on the bottom/right only, so weights
  trained in PyTorch or Caffe compute the same function here.
  """
  p = dilation * (kernel - 1) // 2
  return ((p, p), (p, p))


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2/stride-2 max pooling of [B, H, W, C] (H, W even) as reshape + max.

  Same values as `nn.max_pool(x, (2, 2), (2, 2))`, but its gradient is a plain comparison instead of XLA's
  select-and-scatter, which XLA:CPU lowers about 6x slower (see BENCHMARKS.md).
  """
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def crop(x: jax.Array, top: int, left: int, height: int, width: int) -> jax.Array:
  """The `height` x `width` window of [B, H, W, ...] `x` whose top-left pixel is (top, left).

  Raises:
    ValueError: the window does not fit inside `x`.
  """
  if top < 0 or left < 0 or x.shape[1] < top + height or x.shape[2] < left + width:
    raise ValueError(f"cannot crop {height}x{width} at offset ({top}, {left}) from a {x.shape[1]}x{x.shape[2]} map")
  return x[:, top:top + height, left:left + width]


def center_crop(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """The centre `size` = (h, w) window of [B, H, W, ...] `x`; with an odd margin the extra row/column is
  dropped at the bottom/right."""
  big_h, big_w = x.shape[1:3]
  h, w = size
  if h > big_h or w > big_w:
    raise ValueError(f"cannot centre-crop a {big_h}x{big_w} map to {h}x{w}")
  return crop(x, (big_h - h) // 2, (big_w - w) // 2, h, w)


def upsample_aligned(x: jax.Array, size: Sequence[int], stride: int, centre: float) -> jax.Array:
  """Bilinearly interpolates stride-`stride` scores to `size`, where score i sits over input pixel i*stride + centre.

  The dense-prediction networks here know where each score's receptive field is centred, so output pixel y
  samples the score map at (y - centre) / stride exactly, for any input size:
  - centre 0 (DeepLab's padded 3x3/2 poolings): the corner-aligned resize of n scores to (n - 1) * stride + 1
    pixels, cropped to `size` (exactly Caffe's Interp for inputs of size k * stride + 1);
  - centre (stride - 1) / 2 (SAME convolutions and 2x2/2 poolings, e.g. Yu & Koltun's front-end here): the
    half-pixel resize of n scores to n * stride pixels, cropped to `size`.

  Args:
    x: [B, n_h, n_w, K] scores.
    size: (H, W) of the output; at most the resized map's extent.
    stride: output stride of the scores.
    centre: 0 or (stride - 1) / 2, as above.

  Returns:
    [B, H, W, K] with x's dtype.
  """
  _, nh, nw, _ = x.shape
  if centre == 0:
    y = resize_bilinear(x, ((nh - 1) * stride + 1, (nw - 1) * stride + 1), align_corners=True)
  elif centre == (stride - 1) / 2:
    y = resize_bilinear(x, (nh * stride, nw * stride), align_corners=False)
  else:
    raise ValueError(f"upsample_aligned supports centre 0 or (stride - 1) / 2, got {centre}")
  if y.shape[1] < size[0] or y.shape[2] < size[1]:
    raise ValueError(f"{nh}x{nw} scores at stride {stride} cover {y.shape[1]}x{y.shape[2]} pixels, "
                     f"not {size[0]}x{size[1]}")
  return y[:, :size[0], :size[1]]


class ConvBlock(nn.Module):
  """Two (3x3 conv -> [BatchNorm] -> ReLU) layers: [B, H, W, C] -> [B, H, W, features].

  Attributes:
    features: output channels of both convolutions.
    conv: convolution constructor (a partial of `nn.Conv`).
    norm: constructor of a `segjax.ops.BatchNorm` (called with `activation="relu"`: the ReLU is fused into
      it), or None for conv bias, no normalisation and a plain ReLU.
  """

  features: int
  conv: Callable[..., nn.Module]
  norm: Callable[..., nn.Module] | None

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    for _ in range(2):
      x = self.conv(self.features, (3, 3), use_bias=self.norm is None)(x)
      if self.norm is not None:
        x = self.norm(use_running_average=not train, activation="relu")(x)
      else:
        x = nn.relu(x)
    return x


def conv_and_block(padding: str, batch_norm: bool, dtype: Dtype,
                   param_dtype: Dtype) -> tuple[Callable[..., nn.Module], Callable[..., nn.Module]]:
  """The 3x3 convolution and `ConvBlock` constructors of the U-Net-style networks.

  Args:
    padding: 'SAME' (output as large as the input) or 'VALID' (the original U-Net).
    batch_norm: BatchNorm after every convolution (which then has no bias).
    dtype: compute dtype.
    param_dtype: parameter dtype.

  Returns:
    (conv, block): partials of `segjax.ops.Conv` and of `ConvBlock`, taking the output channels.
  """
  conv = functools.partial(Conv, padding=padding, dtype=dtype, param_dtype=param_dtype)
  norm = batch_norm_partial(dtype, param_dtype) if batch_norm else None
  return conv, functools.partial(ConvBlock, conv=conv, norm=norm)


def classifier(num_classes: int, dtype: Dtype, param_dtype: Dtype, name: str = "classifier",
               **kwargs: Any) -> nn.Module:
  """The 1x1 convolution to class scores, named `name`; call it inside the model's `nn.compact` method."""
  return Conv(num_classes, (1, 1), dtype=dtype, param_dtype=param_dtype, name=name, **kwargs)


def fc_layers(y: jax.Array, layers: Sequence[tuple[str, int, int]], features: int, *, train: bool,
              dropout_rate: float, kernel_init: Callable[..., jax.Array], padding: str | None = None,
              dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32) -> jax.Array:
  """A classifier's fully connected layers as convolutions, each followed by ReLU and dropout (fc6, fc7).

  Call it inside an `nn.compact` method: the convolutions become the caller's submodules, named as in `layers`.

  Args:
    y: [B, h, w, C].
    layers: (name, kernel side, dilation) per layer.
    features: output channels of every layer.
    train: dropout is active when True.
    dropout_rate: dropout after every ReLU.
    kernel_init: kernel initialiser.
    padding: e.g. 'VALID' for every layer; None pads each symmetrically by dilation * (kernel - 1) / 2.
    dtype: compute dtype.
    param_dtype: parameter dtype.

  Returns:
    [B, h', w', features].
  """
  for name, k, dilation in layers:
    pad = symmetric_padding(k, dilation) if padding is None else padding
    y = Conv(features, (k, k), padding=pad, kernel_dilation=dilation, kernel_init=kernel_init, dtype=dtype,
             param_dtype=param_dtype, name=name)(y)
    y = nn.Dropout(dropout_rate, deterministic=not train)(nn.relu(y))
  return y
