"""VGG16 (Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition", ICLR 2015,
configuration "D" of Table 1) as a dense-prediction backbone: the 13 3x3 convolutions, without the classifier.

The layer table is `VGG16_STAGES`: five stages of (channels, number of 3x3 convolutions), each convolution
followed by a ReLU (and, for the VGG16-BN variant, BatchNorm before the ReLU, as torchvision's `vgg16_bn`), and
a max pooling after every stage. Segmentation networks change only the geometry around these layers, so the
module exposes it as fields:

  network (reference)                     conv1_1 pad   pooling (window/stride/pad, rounding)   dilations
  VGG16 / torchvision `features`          1             2/2/0, floor, after every stage         1, 1, 1, 1, 1
  FCN (voc-fcn*s/net.py)                  100           2/2/0, ceil (Caffe)                     1, 1, 1, 1, 1
  DeepLab-LargeFOV (train.prototxt)       1             3/2/1 x3 then 3/1/1 x2, ceil (Caffe)    1, 1, 1, 1, 2
  Yu & Koltun front-end (dilation repo)   1 (paper: 0)  2/2/0 after stages 1-3 only             1, 1, 1, 1, 2

Parameter names are Caffe's and map one-to-one to torchvision's `features` indices, so ImageNet weights load
by name: `conv{stage}_{i}/kernel` [3, 3, Cin, Cout] (HWIO; torchvision's OIHW transposed) and `.../bias`, and
for the BN variant `bn{stage}_{i}/scale|bias` (+ `batch_stats/bn{stage}_{i}/mean|var`). The BN variant keeps
the convolution biases, redundant before BatchNorm but present in torchvision's `vgg16_bn` (138,365,992
parameters with its classifier; 14,723,136 in the 13 convolutions and their BatchNorms).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.layers import Dtype, batch_norm_partial, check_images
from segjax.ops import max_pool_with_argmax
from segjax.ops.conv import Conv

# (output channels, number of 3x3 convolutions) per stage: Simonyan & Zisserman 2015, Table 1, column D.
# 14,714,688 parameters in total (torchvision's `vgg16().features`).
VGG16_STAGES: tuple[tuple[int, int], ...] = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))

# He et al. (2015) normal with fan-in scaling (Caffe's "msra" filler): the plain, BN-less VGG16 trains from
# scratch only with a variance-preserving init; the usual case is loading ImageNet weights over it anyway.
conv_init = nn.initializers.he_normal()


def vgg_stage(x: jax.Array, stage: int, features: int, num_convs: int, *, train: bool, dilation: int = 1,
              batch_norm: bool = False, first_padding: int | None = None, dtype: Dtype = jnp.float32,
              param_dtype: Dtype = jnp.float32) -> jax.Array:
  """One VGG stage: `num_convs` x (3x3 conv -> [BatchNorm] -> ReLU), [B, H, W, Cin] -> [B, H', W', features].

  Must be called inside an `nn.compact` method: the layers become submodules of the calling module, named
  `conv{stage}_{i}` (and `bn{stage}_{i}`), i = 1..num_convs, so every network built from it shares Caffe's and
  torchvision's parameter names.

  Args:
    x: [B, H, W, Cin].
    stage: 1-based stage number, used in the layer names.
    features: output channels of every convolution in the stage.
    num_convs: number of convolutions.
    train: BatchNorm uses batch statistics (and updates `batch_stats`) when True.
    dilation: dilation of every convolution; the padding equals it, so H' = H.
    batch_norm: BatchNorm between each convolution and its ReLU (VGG16-BN).
    first_padding: padding of the stage's first convolution if not `dilation` (FCN pads conv1_1 by 100, so
      H' = H + 2 * (first_padding - dilation)).
    dtype: compute dtype.
    param_dtype: parameter dtype.

  Returns:
    The ReLU output of the last convolution.
  """
  for i in range(1, num_convs + 1):
    pad = dilation if (i > 1 or first_padding is None) else first_padding
    x = Conv(features, (3, 3), padding=((pad, pad), (pad, pad)), kernel_dilation=(dilation, dilation),
             kernel_init=conv_init, dtype=dtype, param_dtype=param_dtype, name=f"conv{stage}_{i}")(x)
    if batch_norm:
      x = batch_norm_partial(dtype, param_dtype, train=train)(activation="relu", name=f"bn{stage}_{i}")(x)
    else:
      x = nn.relu(x)
  return x


def pooled_size(n: int, window: int, stride: int, padding: int = 0, ceil_mode: bool = False) -> int:
  """Output length of a max pooling, with Caffe's / PyTorch's rounding (`ceil_mode` as in PyTorch).

  floor or ceil of (n + 2 * padding - window) / stride, plus 1; with ceil rounding the last window must start
  inside the input or the left padding (PyTorch's rule; Caffe applies the same correction).
  """
  span = n + 2 * padding - window
  out = (-(-span // stride) if ceil_mode else span // stride) + 1
  if ceil_mode and (out - 1) * stride >= n + padding:
    out -= 1
  if out < 1:
    raise ValueError(f"a {window}-wide pooling window (padding {padding}, floor rounding) does not fit a map of "
                     f"size {n}: use a larger input")
  return out


def max_pool(x: jax.Array, window: int = 2, stride: int = 2, padding: int = 0,
             ceil_mode: bool = False) -> jax.Array:
  """Max pooling of [B, H, W, C] with Caffe/PyTorch geometry (symmetric padding, floor or ceil rounding).

  Padded positions never win (they are -inf). The common 2x2/2 unpadded case is a reshape + max, whose gradient
  is a comparison instead of XLA's select-and-scatter (about 2x faster on XLA:CPU, see BENCHMARKS.md).

  Args:
    x: [B, H, W, C].
    window: square window side.
    stride: stride in both directions.
    padding: rows/columns of padding on every side.
    ceil_mode: round the output size up (Caffe always does; PyTorch's `ceil_mode=True`).

  Returns:
    [B, pooled_size(H), pooled_size(W), C].
  """
  _, h, w, _ = x.shape
  oh = pooled_size(h, window, stride, padding, ceil_mode)
  ow = pooled_size(w, window, stride, padding, ceil_mode)
  # Rows/columns the last window needs beyond the symmetric padding (ceil rounding), or drops (floor).
  extra_h = (oh - 1) * stride + window - (h + 2 * padding)
  extra_w = (ow - 1) * stride + window - (w + 2 * padding)
  if window == stride and padding == 0:
    x = x[:, :h + min(extra_h, 0), :w + min(extra_w, 0)]
    if extra_h > 0 or extra_w > 0:
      x = jnp.pad(x, ((0, 0), (0, max(extra_h, 0)), (0, max(extra_w, 0)), (0, 0)), constant_values=-jnp.inf)
    b, _, _, c = x.shape
    return x.reshape(b, oh, window, ow, window, c).max(axis=(2, 4))
  pads = ((padding, padding + max(extra_h, 0)), (padding, padding + max(extra_w, 0)))
  y = nn.max_pool(x, (window, window), strides=(stride, stride), padding=pads)
  return y[:, :oh, :ow]


class VGG16(nn.Module):
  """VGG16's convolutional layers: [B, H, W, C] -> dict of stage outputs (float `dtype`).

  The returned dict has "conv1" ... "conv5" (each stage's last ReLU output, before pooling) and "pool{s}" for
  every stage s that is followed by a pooling (all five by default). With the defaults, "conv{s}" has H / 2**(s-1)
  rows and "pool{s}" H / 2**s (floor rounding, as torchvision); other fields give the FCN, DeepLab and dilated
  front-end geometries of the table in the module docstring.

  Attributes:
    batch_norm: VGG16-BN (torchvision `vgg16_bn`): BatchNorm after every convolution.
    stages: (channels, convolutions) per stage; `VGG16_STAGES` is the network. Narrower tables are for tests.
    dilations: dilation of the 3x3 convolutions of each stage (DeepLab and the front-end use 2 in stage 5).
    pool_strides: stride of the pooling after each stage; 0 removes that pooling (Yu & Koltun remove pool4 and
      pool5), 1 keeps a stride-1 pooling (DeepLab's pool4 and pool5).
    pool_window: pooling window side (2 in VGG16, 3 in DeepLab-LargeFOV).
    pool_padding: pooling padding on every side (0 in VGG16, 1 in DeepLab-LargeFOV).
    ceil_mode: round pooled sizes up as Caffe does (FCN, DeepLab), instead of torchvision's floor.
    conv1_padding: padding of conv1_1 (1 keeps the size; FCN's reference nets use 100).
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  batch_norm: bool = False
  stages: tuple[tuple[int, int], ...] = VGG16_STAGES
  dilations: tuple[int, ...] = (1, 1, 1, 1, 1)
  pool_strides: tuple[int, ...] = (2, 2, 2, 2, 2)
  pool_window: int = 2
  pool_padding: int = 0
  ceil_mode: bool = False
  conv1_padding: int = 1
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> dict[str, jax.Array]:
    check_images(x, "VGG16")
    if not len(self.stages) == len(self.dilations) == len(self.pool_strides):
      raise ValueError(f"VGG16 needs one dilation and one pool stride per stage: stages={self.stages}, "
                       f"dilations={self.dilations}, pool_strides={self.pool_strides}")
    x = x.astype(self.dtype)
    out = {}
    for s, ((features, num_convs), dilation, stride) in enumerate(
        zip(self.stages, self.dilations, self.pool_strides), start=1):
      x = vgg_stage(x, s, features, num_convs, train=train, dilation=dilation, batch_norm=self.batch_norm,
                    first_padding=self.conv1_padding if s == 1 else None, dtype=self.dtype,
                    param_dtype=self.param_dtype)
      out[f"conv{s}"] = x
      if stride:
        x = max_pool(x, self.pool_window, stride, self.pool_padding, self.ceil_mode)
        out[f"pool{s}"] = x
    return out


def scaled_stages(base_features: int) -> tuple[tuple[int, int], ...]:
  """`VGG16_STAGES` (channels, convolutions) with widths scaled so that stage 1 has `base_features` channels."""
  if base_features < 1:
    raise ValueError(f"base_features must be positive, got {base_features}")
  return tuple((max(1, c * base_features // 64), n) for c, n in VGG16_STAGES)


class VGG16ArgmaxEncoder(nn.Module):
  """VGG16-BN's 13 conv layers, pooling with argmax: [B, H, W, C] -> [B, ceil(H/32), ceil(W/32), 512].

  SegNet's and DeconvNet's encoder. The stages are `vgg_stage`, so the layers are named as in
  `VGG16(batch_norm=True)` (`conv1_1`, `bn1_1`, ..., `conv5_3`, `bn5_3`) and ImageNet VGG16 weights load by name.
  Each 2x2/2 pooling rounds up as in Caffe and also returns its argmax. The pre-pooling map of stage s is sown as
  intermediates `pre_pool{s}`.

  Attributes:
    base_features: channels of the first stage; the others scale with it (64: VGG16).
    dtype: compute dtype.
    param_dtype: parameter dtype.

  Returns:
    (pool5 features, list of (indices, (H, W) before pooling) for stages 1..5).
  """

  base_features: int = 64
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, list[tuple[jax.Array, tuple[int, int]]]]:
    switches = []
    for s, (features, num_convs) in enumerate(scaled_stages(self.base_features), start=1):
      x = vgg_stage(x, s, features, num_convs, train=train, batch_norm=True, dtype=self.dtype,
                    param_dtype=self.param_dtype)
      self.sow("intermediates", f"pre_pool{s}", x)
      size = (x.shape[1], x.shape[2])
      x, indices = max_pool_with_argmax(x, 2, 2, ceil_mode=True)
      switches.append((indices, size))
    return x, switches
