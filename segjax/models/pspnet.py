"""PSPNet (Zhao, Shi, Qi, Wang, Jia, "Pyramid Scene Parsing Network", CVPR 2017).

A dilated ResNet (output stride 8) feeds the pyramid pooling module: the 2048-channel layer4 map is average
pooled to 1x1, 2x2, 3x3 and 6x6 bins, each reduced to 2048/4 = 512 channels by a 1x1 convolution + BN + ReLU,
upsampled back and concatenated with the map itself (4096 channels). A 3x3 convolution to 512 + BN + ReLU,
channel dropout 0.1 and a 1x1 classifier give the logits, which are bilinearly resized to the input. During
training an auxiliary head on layer3 (3x3 convolution to 256 + BN + ReLU, dropout 0.1, 1x1 classifier; the
paper's "deep supervision" loss, weight 0.4) adds a second loss.

Layer for layer this is hszhao/semseg's `model/pspnet.py` (the authors' PyTorch code) with its deep-stem
ResNet: the adaptive pooling follows PyTorch's `AdaptiveAvgPool2d` (overlapping bins when the map is not a
multiple of the bin count) and every bilinear resize uses `align_corners=True`, as semseg does and as the
original Caffe model's Interp layer did. (MMSegmentation's PSPHead uses `align_corners=False` and a ResNetV1c
stem of width 32: `stem_width=32` gives its backbone; the heads have the same shapes.) Unlike semseg, which
asserts input sides of the form 8k + 1 (473, 713) so that aligned corners fall on the 1/8 grid exactly, any
input size is accepted.
"""

from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from segjax.models.backbones.resnet import ResNet, conv_init
from segjax.models.layers import Dtype, batch_norm_partial, check_images, symmetric_padding
from segjax.ops.conv import Conv
from segjax.ops.upsample import resize_bilinear


def adaptive_pool_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] averaging weights of PyTorch's adaptive pooling along one axis.

  Bin i averages inputs floor(i * n_in / n_out) .. ceil((i + 1) * n_in / n_out) - 1, so bins overlap when n_in
  is not a multiple of n_out, and repeat inputs when n_out > n_in.
  """
  m = np.zeros((n_out, n_in), np.float64)
  for i in range(n_out):
    start = (i * n_in) // n_out
    end = -(-((i + 1) * n_in) // n_out)
    m[i, start:end] = 1.0 / (end - start)
  return m


def adaptive_avg_pool(x: jax.Array, output_size: int | Sequence[int]) -> jax.Array:
  """`torch.nn.AdaptiveAvgPool2d` for NHWC: [B, H, W, C] -> [B, oh, ow, C] with x's dtype.

  Written as one small matmul per axis (the bins are static), accumulated in float32.
  """
  if x.ndim != 4:
    raise ValueError(f"adaptive_avg_pool expects [B, H, W, C], got shape {x.shape}")
  oh, ow = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
  mh = jnp.asarray(adaptive_pool_matrix(x.shape[1], oh), jnp.float32)
  mw = jnp.asarray(adaptive_pool_matrix(x.shape[2], ow), jnp.float32)
  y = jnp.einsum("ih,bhwc,jw->bijc", mh, x.astype(jnp.float32), mw, precision=jax.lax.Precision.HIGHEST)
  return y.astype(x.dtype)


class PyramidPooling(nn.Module):
  """Pyramid pooling module: [B, h, w, C] -> [B, h, w, C + len(bins) * (C // len(bins))].

  Attributes:
    bins: output sides of the adaptive average pools (paper: 1, 2, 3, 6).
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  bins: Sequence[int] = (1, 2, 3, 6)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    h, w, c = x.shape[1:]
    # Paper, Sec. 3.3: each level is reduced to 1/N of the channels for an N-level pyramid (512 for 2048 / 4).
    reduced = c // len(self.bins)
    outputs = [x]
    for i, b in enumerate(self.bins):
      y = adaptive_avg_pool(x, b)
      y = Conv(reduced, (1, 1), use_bias=False, kernel_init=conv_init, dtype=self.dtype,
               param_dtype=self.param_dtype, name=f"conv{i}")(y)
      y = batch_norm_partial(self.dtype, self.param_dtype, train=train)(activation="relu", name=f"bn{i}")(y)
      outputs.append(resize_bilinear(y, (h, w), align_corners=True))
    return jnp.concatenate(outputs, axis=-1)


class ConvHead(nn.Module):
  """3x3 conv + BN + ReLU, channel dropout, 1x1 classifier: [B, h, w, C] -> [B, h, w, num_classes].

  Attributes:
    num_classes: output channels.
    features: channels of the 3x3 convolution (512 for PSPNet's main head, 256 for the auxiliary one).
    dropout_rate: probability of dropping a whole channel (PyTorch's Dropout2d, as in semseg and MMSeg).
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  num_classes: int
  features: int
  dropout_rate: float = 0.1
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = Conv(self.features, (3, 3), padding=symmetric_padding(3), use_bias=False, kernel_init=conv_init,
             dtype=self.dtype, param_dtype=self.param_dtype, name="conv")(x)
    x = batch_norm_partial(self.dtype, self.param_dtype, train=train)(activation="relu", name="bn")(x)
    x = nn.Dropout(self.dropout_rate, broadcast_dims=(1, 2), deterministic=not train)(x)
    # MMSeg's decode heads start the classifier at N(0, 0.01^2).
    return Conv(self.num_classes, (1, 1), kernel_init=nn.initializers.normal(0.01), dtype=self.dtype,
                param_dtype=self.param_dtype, name="classifier")(x)


class PSPNet(nn.Module):
  """PSPNet on a dilated ResNet. Input [B, H, W, C] of any size; output float32 logits [B, H, W, num_classes].

  With `train=True` and `aux_head`, the auxiliary logits (resized to H, W, float32) are sown as
  `("aux", "logits")`; `__call__` returns only the main logits. The auxiliary head's parameters are created
  at initialisation even with `train=False`, and the head is skipped in evaluation.

  Attributes:
    num_classes: number of classes.
    depth: ResNet depth, 50, 101 or 152.
    output_stride: backbone output stride; 8 in the paper (16 or 32 are cheaper variants).
    stem: "deep" (three 3x3 convolutions, the ResNet PSPNet was trained with) or "standard" (torchvision).
    stem_width: deep-stem width: 64 (semseg, 64-64-128) or 32 (MMSeg ResNetV1c, 32-32-64).
    stride_in_1x1: ResNet v1 blocks (stride in the first 1x1 convolution), for Keras/Caffe ResNet weights with
      `stem="standard"`; False is torchvision's v1.5.
    bins: pyramid pooling output sides (1, 2, 3, 6).
    dropout_rate: channel dropout before both classifiers (0.1).
    aux_head: build the auxiliary layer3 head for the deep-supervision loss.
    width: base width of the backbone (64 in the paper); the heads' 512/256 channels scale with it. Only for
      narrow variants (tests, CPU experiments).
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  num_classes: int
  depth: int = 50
  output_stride: int = 8
  stem: str = "deep"
  stem_width: int = 64
  stride_in_1x1: bool = False
  bins: tuple[int, ...] = (1, 2, 3, 6)
  dropout_rate: float = 0.1
  aux_head: bool = True
  width: int = 64
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    check_images(x, "PSPNet")
    if not self.bins or any(b < 1 for b in self.bins):
      raise ValueError(f"PSPNet bins must be positive pooling sizes, got {self.bins}")
    size = x.shape[1:3]
    features = ResNet(depth=self.depth, output_stride=self.output_stride, stem=self.stem,
                      stem_width=self.stem_width, stride_in_1x1=self.stride_in_1x1, width=self.width,
                      dtype=self.dtype, param_dtype=self.param_dtype, name="backbone")(x, train=train)
    head = functools.partial(ConvHead, self.num_classes, dropout_rate=self.dropout_rate, dtype=self.dtype,
                             param_dtype=self.param_dtype)

    y = PyramidPooling(self.bins, dtype=self.dtype, param_dtype=self.param_dtype, name="ppm")(
        features["layer4"], train=train)
    logits = head(512 * self.width // 64, name="cls")(y, train=train)
    # Resize in float32: bfloat16 logits would round the interpolation weights.
    logits = resize_bilinear(logits.astype(jnp.float32), size, align_corners=True)

    # Evaluation skips the auxiliary head, but initialisation must still create its parameters.
    if self.aux_head and (train or self.is_initializing()):
      aux = head(256 * self.width // 64, name="aux")(features["layer3"], train=train)
      aux = resize_bilinear(aux.astype(jnp.float32), size, align_corners=True)
      if train:
        self.sow("aux", "logits", aux)
    return logits
