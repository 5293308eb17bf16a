"""DeconvNet (Noh, Hong, Han, "Learning Deconvolution Network for Semantic Segmentation", ICCV 2015).

A VGG16 encoder (every convolution followed by BatchNorm and ReLU, 2x2/2 max pooling with argmax), VGG16's
fully connected layers as convolutions (fc6: 7x7 'VALID' to 4096, fc7: 1x1 to 4096), then a mirrored decoder:
`fc6_deconv`, a 7x7 transposed convolution back to pool5's 7x7x512, and five stages of max unpooling with the
encoder's indices followed by 3x3 stride-1 "deconvolutions" (transposed convolutions, each with BatchNorm and
ReLU), and a 1x1 classifier. Layer table and names follow HyeonwooNoh/DeconvNet
(model/DeconvNet/DeconvNet_inference_deploy.prototxt); 251.8 M parameters for VOC's 21 classes, the paper's
"252M" (SegNet, TPAMI 2017, Table 6 lists the same figure).

Input size: the reference runs on 224x224 object proposals, where pool5 is 7x7 and fc6 reduces it to 1x1.
With `fc6_padding='VALID'` (the reference) fc6 is a 7x7 valid convolution and `fc6_deconv` a 7x7 valid
transposed convolution, which maps an (h-6)x(w-6) map back to hxw, so any input whose pool5 is at least 7x7
works: pooling rounds up as in Caffe, so H, W >= 193 (`min_input_size`); nothing needs to be a multiple of 32,
the decoder unpools to every recorded pre-pooling size. `fc6_padding='SAME'` pads both 7x7 layers instead
(same parameters), so images of any size can be segmented without resizing them to at least 193 pixels; this
is a deviation from the paper, for whole-image training on small crops.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.backbones.vgg import VGG16ArgmaxEncoder, conv_init, scaled_stages
from segjax.models.layers import Dtype, batch_norm_partial, check_images
from segjax.ops import max_unpool
from segjax.ops.conv import Conv

# The reference fills every decoder layer it trains from scratch with N(0, 0.01) (Caffe "gaussian", std 0.01);
# the encoder and fc6/fc7 come from ImageNet VGG16 there, so they get He initialisation here.
_DECODER_INIT = nn.initializers.normal(0.01)


class DeconvNet(nn.Module):
  """DeconvNet with BatchNorm. [B, H, W, C] -> float32 [B, H, W, K].

  Parameter names: `encoder/conv1_1`, `encoder/bn1_1`, ... `encoder/bn5_3` (as `VGG16(batch_norm=True)`), then
  `fc6`, `fc7`, `fc6_deconv`, `deconv5_1` ... `deconv1_2` (each with a `<name>_bn` BatchNorm; the prototxt's
  `bnfc6`, `debn5_1`, ...) and `seg_score`. The unpooled maps are sown as intermediates `unpool{s}`.

  Attributes:
    num_classes: K.
    base_features: first-stage channels; encoder and decoder widths scale with it (64: the published network).
    fc_features: channels of fc6 and fc7 (4096: the published network).
    fc6_padding: 'VALID' (the reference: needs H, W >= 193) or 'SAME' (any size; see the module docstring).
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  num_classes: int
  base_features: int = 64
  fc_features: int = 4096
  fc6_padding: str = "VALID"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @property
  def min_input_size(self) -> int:
    # Five ceil-mode poolings turn n into ceil(n / 32); the 7x7 'VALID' fc6 needs that to be at least 7.
    return 6 * 32 + 1 if self.fc6_padding == "VALID" else 1

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    check_images(x, "DeconvNet")
    if self.fc6_padding not in ("VALID", "SAME"):
      raise ValueError(f"DeconvNet.fc6_padding must be 'VALID' or 'SAME', got {self.fc6_padding!r}")
    if min(x.shape[1], x.shape[2]) < self.min_input_size:
      raise ValueError(
          f"DeconvNet(fc6_padding='VALID') needs height and width of at least {self.min_input_size} (pool5 at "
          f"least 7x7 for the 7x7 fc6), got {x.shape[1]}x{x.shape[2]}: resize or pad the input (the paper uses "
          f"224x224 crops) or set fc6_padding='SAME'.")
    norm = batch_norm_partial(self.dtype, self.param_dtype, train=train)
    conv = functools.partial(Conv, kernel_init=conv_init, dtype=self.dtype,
                             param_dtype=self.param_dtype)
    deconv = functools.partial(nn.ConvTranspose, kernel_init=_DECODER_INIT, dtype=self.dtype,
                               param_dtype=self.param_dtype)

    x, switches = VGG16ArgmaxEncoder(self.base_features, self.dtype, self.param_dtype, name="encoder")(
        x.astype(self.dtype), train=train)
    pool5_channels = x.shape[-1]
    x = conv(self.fc_features, (7, 7), padding=self.fc6_padding, name="fc6")(x)
    x = norm(name="fc6_bn", activation="relu")(x)
    x = norm(name="fc7_bn", activation="relu")(conv(self.fc_features, (1, 1), name="fc7")(x))
    x = deconv(pool5_channels, (7, 7), padding=self.fc6_padding, name="fc6_deconv")(x)
    x = norm(name="fc6_deconv_bn", activation="relu")(x)

    stages = scaled_stages(self.base_features)
    for s in reversed(range(1, 6)):
      indices, size = switches[s - 1]
      x = max_unpool(x, indices, size)
      self.sow("intermediates", f"unpool{s}", x)
      width, num_convs = stages[s - 1]
      for i in range(1, num_convs + 1):
        # Mirror of the encoder: the stage's last layer narrows to the width of the stage below it.
        features = stages[s - 2][0] if i == num_convs and s > 1 else width
        # A 3x3 stride-1 transposed convolution with padding 1 keeps the size (Caffe's pad: 1).
        x = deconv(features, (3, 3), padding="SAME", name=f"deconv{s}_{i}")(x)
        x = norm(name=f"deconv{s}_{i}_bn", activation="relu")(x)
    x = Conv(self.num_classes, (1, 1), kernel_init=_DECODER_INIT, dtype=self.dtype,
             param_dtype=self.param_dtype, name="seg_score")(x)
    return x.astype(jnp.float32)
