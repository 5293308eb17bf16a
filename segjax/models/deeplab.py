"""DeepLab-LargeFOV (Chen, Papandreou, Kokkinos, Murphy, Yuille, "Semantic Image Segmentation with Deep
Convolutional Nets and Fully Connected CRFs", ICLR 2015), without the CRF.

VGG16 made denser, as in the reference DeepLab-LargeFOV train.prototxt: pool1-pool3 are 3x3/2 max poolings
with padding 1, pool4 and pool5 3x3/1 with padding 1 (they no longer subsample), conv5_1-conv5_3 are dilated
by 2 ("hole" 2), and the classifier is fc6: 3x3 with dilation 12 and 1024 channels (the "large field of view"),
fc7: 1x1 with 1024 channels, both followed by ReLU and dropout 0.5, and fc8: 1x1 to the classes (Gaussian
init, std 0.01). The scores have output stride 8: Caffe rounds the poolings up, so a 321x321 crop (8k + 1)
gives the paper's 41x41 (k + 1) score map, and score i sits exactly over input pixel 8i.

The paper trains against labels subsampled by 8 and interpolates the scores bilinearly only at test time.
This module always returns logits at the input resolution (the library's single contract), interpolated
with that exact geometry (sample position y / 8, i.e. Caffe's corner-aligned Interp for 8k + 1 inputs), so
training here computes the loss on full-resolution labels instead of subsampled ones.

Parameters: the 13 VGG16 convolutions (`backbone/conv1_1` ... `backbone/conv5_3`, 14,714,688), fc6
(4,719,616), fc7 (1,049,600) and fc8 (1024 * K + K): 20,505,429 for the 21 PASCAL VOC classes, the "20.5M" of
the paper's Table 2 (DeepLab-CRF-LargeFOV).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.backbones.vgg import VGG16, VGG16_STAGES, conv_init
from segjax.models.layers import Dtype, check_images, fc_layers, upsample_aligned
from segjax.ops.conv import Conv

OUTPUT_STRIDE = 8


class DeepLabLargeFOV(nn.Module):
  """DeepLab-LargeFOV: [B, H, W, C] (any H, W) -> float32 logits [B, H, W, K], from scores at stride 8.

  Attributes:
    num_classes: K.
    dropout_rate: dropout after fc6 and fc7 (0.5).
    fc_features: channels of fc6 and fc7 (1024); smaller only for tests.
    fc6_dilation: dilation (and padding) of the 3x3 fc6 (12: LargeFOV's 224-pixel field of view).
    stages: VGG16's layer table (`VGG16_STAGES`); narrower only for tests.
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  num_classes: int
  dropout_rate: float = 0.5
  fc_features: int = 1024
  fc6_dilation: int = 12
  stages: tuple[tuple[int, int], ...] = VGG16_STAGES
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    check_images(x, "DeepLabLargeFOV")
    _, h, w, _ = x.shape
    feats = VGG16(stages=self.stages, dilations=(1, 1, 1, 1, 2), pool_strides=(2, 2, 2, 1, 1), pool_window=3,
                  pool_padding=1, ceil_mode=True, dtype=self.dtype, param_dtype=self.param_dtype,
                  name="backbone")(x, train=train)
    y = fc_layers(feats["pool5"], (("fc6", 3, self.fc6_dilation), ("fc7", 1, 1)), self.fc_features, train=train,
                  dropout_rate=self.dropout_rate, kernel_init=conv_init, dtype=self.dtype,
                  param_dtype=self.param_dtype)
    scores = Conv(self.num_classes, (1, 1), kernel_init=nn.initializers.normal(0.01), dtype=self.dtype,
                  param_dtype=self.param_dtype, name="fc8")(y)
    return upsample_aligned(scores, (h, w), OUTPUT_STRIDE, centre=0).astype(jnp.float32)
