"""U-Net with a VGG16 encoder: TernausNet-16.

TernausNet (Iglovikov & Shvets, "TernausNet: U-Net with VGG11 Encoder Pre-Trained on ImageNet for Image
Segmentation", 2018) replaces U-Net's contracting path by an ImageNet classifier's convolutions; its authors' VGG16
version (`UNet16` in github.com/ternaus/TernausNet, ternausnet/models.py, used in Shvets et al., "Automatic
Instrument Segmentation in Robot-Assisted Surgery Using Deep Learning", 2018) is the network here. Decoder widths
are TernausNet's, with f = `num_filters` (32):

  block    input (concatenation)        3x3 conv   then           output side
  center   pool5 (512)                  16 f       up, 3x3 -> 8 f  H/16
  dec5     center + conv5 (8 f + 512)   16 f       up, 3x3 -> 8 f  H/8
  dec4     dec5 + conv4 (8 f + 512)     16 f       up, 3x3 -> 8 f  H/4
  dec3     dec4 + conv3 (8 f + 256)     8 f        up, 3x3 -> 2 f  H/2
  dec2     dec3 + conv2 (2 f + 128)     4 f        up, 3x3 -> f    H
  dec1     dec2 + conv1 (f + 64)        f                          H
  classifier 1x1 -> num_classes

"up" is TernausNet's `DecoderBlockV2`: with `upsample='bilinear'` (its default, `is_deconv=False`) the block
upsamples 2x bilinearly first and then applies two 3x3 convolutions + ReLU (the "3x3 conv" column, then the 3x3 to
the output width); with `upsample='transpose'` (`is_deconv=True`) it applies one 3x3 convolution + ReLU and a 4x4
stride-2 transposed convolution + ReLU (kernel 4, padding 1, chosen to avoid checkerboard artefacts). All
convolutions are 'SAME'-padded and the encoder pools five times, so H and W must be multiples of 32.

The encoder is `segjax.models.backbones.vgg.VGG16` (torchvision's `features` geometry, Caffe/torchvision parameter
names, so ImageNet weights load into `params['encoder']`); `batch_norm=True` makes it VGG16-BN. The decoder has no
BatchNorm, as in TernausNet.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.backbones.vgg import VGG16
from segjax.models.layers import Dtype, check_divisible, check_images, classifier
from segjax.ops.conv import Conv
from segjax.ops.upsample import resize_bilinear

_UPSAMPLE = ("bilinear", "transpose")


class DecoderBlock(nn.Module):
  """TernausNet's DecoderBlockV2: [B, H, W, Cin] -> [B, 2H, 2W, features].

  Attributes:
    middle: width of the first 3x3 convolution.
    features: output channels.
    upsample: 'bilinear' (2x resize, 3x3 conv + ReLU, 3x3 conv + ReLU) or 'transpose' (3x3 conv + ReLU, 4x4
      stride-2 transposed conv + ReLU).
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  middle: int
  features: int
  upsample: str = "bilinear"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(Conv, kernel_size=(3, 3), padding="SAME", kernel_init=nn.initializers.he_normal(),
                             dtype=self.dtype, param_dtype=self.param_dtype)
    b, h, w, _ = x.shape
    if self.upsample == "bilinear":
      x = resize_bilinear(x, (2 * h, 2 * w))
      x = nn.relu(conv(self.middle, name="conv1")(x))
      return nn.relu(conv(self.features, name="conv2")(x))
    x = nn.relu(conv(self.middle, name="conv")(x))
    # PyTorch's ConvTranspose2d(kernel 4, stride 2, padding 1) is a stride-2 transposed convolution whose dilated
    # input is padded by kernel - 1 - padding = 2 on each side: output exactly 2H x 2W.
    x = nn.ConvTranspose(self.features, (4, 4), strides=(2, 2), padding=((2, 2), (2, 2)),
                         kernel_init=nn.initializers.he_normal(), dtype=self.dtype, param_dtype=self.param_dtype,
                         name="deconv")(x)
    return nn.relu(x)


class UNetVGG16(nn.Module):
  """TernausNet-16: [B, H, W, C] (H, W multiples of 32) -> logits [B, H, W, K] float32.

  Attributes:
    num_classes: K.
    num_filters: decoder base width f (TernausNet: 32); the widths are in the module docstring.
    batch_norm: VGG16-BN encoder (BatchNorm after every encoder convolution); the decoder has none.
    upsample: 'bilinear' (TernausNet-16's default) or 'transpose' (its `is_deconv=True`).
    dtype: compute dtype; parameters stay `param_dtype`.
    param_dtype: parameter dtype.
  """

  num_classes: int
  num_filters: int = 32
  batch_norm: bool = False
  upsample: str = "bilinear"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @property
  def size_divisor(self) -> int:
    return 32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    check_images(x, "UNetVGG16")
    check_divisible(x, "UNetVGG16", self.size_divisor, " (five 2x2 poolings)")
    if self.upsample not in _UPSAMPLE:
      raise ValueError(f"UNetVGG16.upsample must be one of {_UPSAMPLE}, got {self.upsample!r}")
    f = self.num_filters
    block = functools.partial(DecoderBlock, upsample=self.upsample, dtype=self.dtype, param_dtype=self.param_dtype)
    features = VGG16(batch_norm=self.batch_norm, dtype=self.dtype, param_dtype=self.param_dtype,
                     name="encoder")(x, train=train)
    y = block(16 * f, 8 * f, name="center")(features["pool5"])
    y = block(16 * f, 8 * f, name="dec5")(jnp.concatenate([y, features["conv5"]], axis=-1))
    y = block(16 * f, 8 * f, name="dec4")(jnp.concatenate([y, features["conv4"]], axis=-1))
    y = block(8 * f, 2 * f, name="dec3")(jnp.concatenate([y, features["conv3"]], axis=-1))
    y = block(4 * f, f, name="dec2")(jnp.concatenate([y, features["conv2"]], axis=-1))
    y = Conv(f, (3, 3), padding="SAME", kernel_init=nn.initializers.he_normal(), dtype=self.dtype,
             param_dtype=self.param_dtype, name="dec1")(jnp.concatenate([y, features["conv1"]], axis=-1))
    return classifier(self.num_classes, self.dtype, self.param_dtype)(nn.relu(y)).astype(jnp.float32)
