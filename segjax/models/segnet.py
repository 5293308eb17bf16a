"""SegNet and SegNet-Basic (Badrinarayanan, Kendall, Cipolla, "SegNet: A Deep Convolutional Encoder-Decoder
Architecture for Image Segmentation", IEEE TPAMI 2017).

The encoder's max-pooling layers remember where every maximum came from; each decoder stage writes its input
back to exactly those positions ("max unpooling", zeros elsewhere) and densifies the sparse map with trainable
convolutions. No upsampling is learned and no encoder feature map is kept, only the indices.

Layer tables follow the reference Caffe models of alexgkendall/SegNet-Tutorial (Models/segnet_train.prototxt
and Models/segnet_basic_train.prototxt):

* SegNet: the 13 3x3 convolutions of VGG16, each followed by BatchNorm and ReLU (VGG16-BN), with 2x2/2 max
  pooling after every stage; the decoder mirrors them with 13 3x3 convolutions `conv5_3_D` ... `conv1_1_D`, the
  last of which is the classifier (num_classes outputs, no BatchNorm, no ReLU; there is no separate 1x1
  classifier). 29,449,355 parameters for CamVid's 11 classes, the "29.5M" of the paper's Table 6.
* SegNet-Basic: an LRN of the input, four encoders of 7x7 conv (64) + BN + ReLU + 2x2/2 max pooling, four
  decoders of unpooling + 7x7 conv (64) + BN with *no* ReLU (the prototxt has none in the decoder), and a 1x1
  classifier.

Caffe pools with "ceil" rounding, so odd sizes work: CamVid's 360x480 pools to 45x60 -> 23x30 at pool4, and the
decoder unpools back to the recorded 45x60. Every convolution keeps its bias as in the Caffe models (redundant
before BatchNorm, but it keeps the published parameter count and lets ImageNet VGG16 weights, which have
biases, load by name into `encoder/conv1_1` ... `encoder/conv5_3`). Weights are initialised with Caffe's
"msra" filler (He normal, fan-in), as in the prototxts.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.backbones.vgg import VGG16ArgmaxEncoder, conv_init, scaled_stages
from segjax.models.layers import Dtype, batch_norm_partial, check_images
from segjax.ops import max_pool_with_argmax
from segjax.ops.conv import Conv
from segjax.ops.upsample import Upsample


def local_response_norm(x: jax.Array, size: int = 5, alpha: float = 1e-4, beta: float = 0.75,
                        k: float = 1.0) -> jax.Array:
  """Caffe's across-channel LRN: x / (k + alpha / size * sum of x**2 over `size` neighbouring channels)**beta.

  The channel window is centred and zero-padded at the ends, as in Caffe's `LRN` layer.
  """
  squares = jnp.square(x.astype(jnp.float32))
  half = size // 2
  padded = jnp.pad(squares, [(0, 0)] * (x.ndim - 1) + [(half, size - 1 - half)])
  window_sum = sum(padded[..., i:i + x.shape[-1]] for i in range(size))
  return (x / (k + alpha / size * window_sum) ** beta).astype(x.dtype)


class SegNet(nn.Module):
  """SegNet (VGG16-BN encoder, mirrored index-unpooling decoder). [B, H, W, C] -> float32 [B, H, W, K].

  Any H, W work: pooling rounds up like Caffe and every decoder stage unpools to the size its encoder stage
  had. Parameter names: encoder as `VGG16(batch_norm=True)` (`encoder/conv1_1`, `encoder/bn1_1`, ...; the
  prototxt calls the BatchNorms `conv1_1_bn`), decoder as the prototxt (`conv5_3_D`, `conv5_3_D_bn`, ...,
  `conv1_1_D`, the last of which is the classifier). The unpooled maps are sown as intermediates `unpool{s}`.

  Attributes:
    num_classes: K.
    base_features: first-stage channels; all widths scale with it (64: the published network; smaller values
      only for tests and experiments).
    upsample: decoder upsampling, "unpool" (the paper's index unpooling) or any other `segjax.ops.Upsample`
      method ("bed_of_nails", "nearest", "bilinear", "learned", "transpose", "transpose_bilinear"), for the
      decoder-variant comparisons of the SegNet paper (Sec. 4).
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  num_classes: int
  base_features: int = 64
  upsample: str = "unpool"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    check_images(x, "SegNet")
    conv = functools.partial(Conv, kernel_size=(3, 3), padding=1, kernel_init=conv_init, dtype=self.dtype,
                             param_dtype=self.param_dtype)
    norm = batch_norm_partial(self.dtype, self.param_dtype, train=train)
    x, switches = VGG16ArgmaxEncoder(self.base_features, self.dtype, self.param_dtype, name="encoder")(
        x.astype(self.dtype), train=train)
    stages = scaled_stages(self.base_features)
    for s in reversed(range(1, 6)):
      indices, size = switches[s - 1]
      x = Upsample(self.upsample, 2, dtype=self.dtype, param_dtype=self.param_dtype, name=f"upsample{s}")(
          x, indices=indices if self.upsample == "unpool" else None, output_shape=size)
      self.sow("intermediates", f"unpool{s}", x)
      width, num_convs = stages[s - 1]
      for i in reversed(range(1, num_convs + 1)):
        if s == 1 and i == 1:
          x = conv(self.num_classes, name="conv1_1_D")(x)  # the classifier: no BN, no ReLU
          break
        # The mirror image of encoder conv{s}_{i}: it maps back to that layer's input width.
        features = width if i > 1 else stages[s - 2][0]
        x = conv(features, name=f"conv{s}_{i}_D")(x)
        x = norm(name=f"conv{s}_{i}_D_bn", activation="relu")(x)
    return x.astype(jnp.float32)


class SegNetBasic(nn.Module):
  """SegNet-Basic: 4 x (7x7 conv, BN, ReLU, pool) encoder, 4 x (unpool, 7x7 conv, BN) decoder, 1x1 classifier.

  [B, H, W, C] -> float32 [B, H, W, K] for any H, W. Parameter names follow the prototxt (`conv1`, `conv1_bn`,
  ..., `conv_decode4`, ..., `conv_classifier`). The decoder has no ReLU, as in segnet_basic_train.prototxt.

  Attributes:
    num_classes: K.
    features: channels of every encoder and decoder layer (paper: 64).
    kernel_size: side of every encoder and decoder filter (paper: 7).
    upsample: decoder upsampling, "unpool" (the paper's) or another `segjax.ops.Upsample` method.
    input_lrn: apply Caffe's LRN (local_size 5, alpha 1e-4, beta 0.75) to the input first, as the reference
      model does (it stands in for the paper's local contrast normalisation of the raw image). On inputs
      already normalised to unit scale it is close to the identity.
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  num_classes: int
  features: int = 64
  kernel_size: int = 7
  upsample: str = "unpool"
  input_lrn: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    check_images(x, "SegNetBasic")
    k = self.kernel_size
    conv = functools.partial(Conv, self.features, (k, k), padding=k // 2, kernel_init=conv_init,
                             dtype=self.dtype, param_dtype=self.param_dtype)
    norm = batch_norm_partial(self.dtype, self.param_dtype, train=train)
    if self.input_lrn:
      x = local_response_norm(x)
    x = x.astype(self.dtype)
    switches = []
    for s in range(1, 5):
      x = norm(name=f"conv{s}_bn", activation="relu")(conv(name=f"conv{s}")(x))
      self.sow("intermediates", f"pre_pool{s}", x)
      size = (x.shape[1], x.shape[2])
      x, indices = max_pool_with_argmax(x, 2, 2, ceil_mode=True)
      switches.append((indices, size))
    for s in reversed(range(1, 5)):
      indices, size = switches[s - 1]
      x = Upsample(self.upsample, 2, dtype=self.dtype, param_dtype=self.param_dtype, name=f"upsample{s}")(
          x, indices=indices if self.upsample == "unpool" else None, output_shape=size)
      self.sow("intermediates", f"unpool{s}", x)
      x = norm(name=f"conv_decode{s}_bn")(conv(name=f"conv_decode{s}")(x))
    x = Conv(self.num_classes, (1, 1), kernel_init=conv_init, dtype=self.dtype, param_dtype=self.param_dtype,
             name="conv_classifier")(x)
    return x.astype(jnp.float32)

