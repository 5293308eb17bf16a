"""DeepLabV3 (Chen, Papandreou, Schroff, Adam, "Rethinking Atrous Convolution for Semantic Image Segmentation",
arXiv:1706.05587, 2017) and DeepLabV3+ (Chen, Zhu, Papandreou, Schroff, Adam, "Encoder-Decoder with Atrous
Separable Convolution for Semantic Image Segmentation", ECCV 2018), on a dilated ResNet-50/101.

`DeepLabV3` is torchvision's `deeplabv3_resnet50/101` layer for layer: a ResNet with `replace_stride_with_dilation`
(output stride 8: layer3 and layer4 dilated by 2 and 4, the first block of each keeping the previous dilation,
`contract_dilation=True` here), then atrous spatial pyramid pooling (ASPP) on layer4: a 1x1 convolution, three
3x3 convolutions dilated by 12/24/36 (6/12/18 at output stride 16, the paper's Sec. 3.3 doubling the rates when
the stride halves) and image pooling (global average, 1x1 convolution, broadcast back), each 256 channels + BN +
ReLU; the 1280 channels are projected to 256 by a 1x1 convolution + BN + ReLU and dropout 0.5, followed by a 3x3
convolution + BN + ReLU and a 1x1 classifier. The logits are resized to the input bilinearly (half-pixel
centres, torchvision's `align_corners=False`). With `aux_head`, torchvision's FCNHead on layer3 (3x3 convolution
1024 -> 256 + BN + ReLU, dropout 0.1, 1x1 classifier) gives training-time auxiliary logits (`aux_loss=True`).
Parameters equal torchvision's `deeplabv3_resnet50(aux_loss=True, num_classes=21)`: 42,004,074
(tests/models/test_deeplabv3.py builds the torch model and compares counts and outputs).

`DeepLabV3Plus` is segmentation_models_pytorch's `DeepLabV3Plus` (0.6): the ResNet at output stride 16 (every block
of layer4 dilated by 2: SMP patches all its convolutions, so `contract_dilation=False`), ASPP with depthwise-
separable 3x3 branches (a depthwise 3x3 dilated convolution, then a bias-free pointwise 1x1 convolution, then BN +
ReLU), projection + dropout 0.5, a separable 3x3 convolution + BN + ReLU, bilinear upsampling (aligned corners, as
SMP) to layer1's stride 4, concatenation with layer1 reduced to 48 channels (1x1 convolution + BN + ReLU; the
paper's Sec. 4.1 choice), one separable 3x3 convolution to 256 + BN + ReLU, a 1x1 classifier, and aligned-corner
upsampling to the input. SMP's default atrous rates are 12/24/36 even at output stride 16; here the default follows
the paper (6/12/18 at stride 16, 12/24/36 at 8) and `atrous_rates=(12, 24, 36)` gives SMP's. Rates do not change
the parameter count, which equals SMP's `DeepLabV3Plus("resnet50", classes=K)`: 26,677,585 for K = 1.

Both backbones are the `ResNet` of segjax.models.backbones with torchvision's stem and names under `backbone`, so
`config.init_from` loads torchvision's ImageNet ResNet-50/101 files into them (segjax.weights). Head convolutions
start from the backbone's He (fan-out) normal, the classifiers from N(0, 0.01^2) with zero bias, as the other
ResNet heads here (torchvision leaves PyTorch's default init, SMP uses Kaiming-uniform / Xavier; the trained
function does not depend on this).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.backbones.resnet import ResNet, conv_init
from segjax.models.layers import Dtype, batch_norm_partial, check_images, symmetric_padding
from segjax.ops.conv import Conv
from segjax.ops.upsample import resize_bilinear

# The paper's rates (Sec. 3.3): (6, 12, 18) at output stride 16, doubled at 8 (torchvision's DeepLabHead default).
ATROUS_RATES = {8: (12, 24, 36), 16: (6, 12, 18)}


def _rates(output_stride: int, atrous_rates: tuple[int, ...], model: str) -> tuple[int, ...]:
  if output_stride not in ATROUS_RATES:
    raise ValueError(f"{model} output_stride must be 8 or 16, got {output_stride}")
  rates = tuple(atrous_rates) or ATROUS_RATES[output_stride]
  if len(rates) != 3 or any(r < 1 for r in rates):
    raise ValueError(f"{model} atrous_rates must be three positive dilations (or () for the paper's), got {rates}")
  return rates


def _layers(dtype: Dtype, param_dtype: Dtype, train: bool):
  """Bias-free convolution (He fan-out init) and BatchNorm constructors of the heads."""
  conv = functools.partial(Conv, use_bias=False, kernel_init=conv_init, dtype=dtype, param_dtype=param_dtype)
  return conv, batch_norm_partial(dtype, param_dtype, train=train)


class SeparableConv(nn.Module):
  """SMP's `SeparableConv2d` without bias: depthwise k x k (dilated) convolution, then pointwise 1x1.

  Attributes:
    features: output channels of the pointwise convolution.
    kernel_size: side of the depthwise kernel.
    dilation: dilation (and padding) of the depthwise convolution.
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  features: int
  kernel_size: int = 3
  dilation: int = 1
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(Conv, use_bias=False, kernel_init=conv_init, dtype=self.dtype,
                             param_dtype=self.param_dtype)
    c = x.shape[-1]
    k, d = self.kernel_size, self.dilation
    x = conv(c, (k, k), padding=symmetric_padding(k, d), kernel_dilation=d, feature_group_count=c,
             name="depthwise")(x)
    return conv(self.features, (1, 1), padding="VALID", name="pointwise")(x)


class ASPP(nn.Module):
  """Atrous spatial pyramid pooling: [B, h, w, C] -> [B, h, w, features].

  Branches `conv0` (1x1), `conv1`..`conv3` (3x3 dilated by `rates`, separable or not) and `pool_conv` (image
  pooling), each + BN (`bn0`..`bn3`, `pool_bn`) + ReLU, concatenated, projected by `project` + `project_bn` + ReLU,
  then dropout.

  Attributes:
    rates: the three dilations.
    features: channels of every branch and of the output (256).
    separable: depthwise-separable 3x3 branches (DeepLabV3+ / SMP) instead of full convolutions (torchvision).
    dropout_rate: element-wise dropout after the projection (0.5; torchvision's and SMP's `nn.Dropout`).
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  rates: tuple[int, ...]
  features: int = 256
  separable: bool = False
  dropout_rate: float = 0.5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    conv, norm = _layers(self.dtype, self.param_dtype, train)
    h, w = x.shape[1:3]
    y = conv(self.features, (1, 1), padding="VALID", name="conv0")(x)
    branches = [norm(activation="relu", name="bn0")(y)]
    for i, rate in enumerate(self.rates, start=1):
      if self.separable:
        y = SeparableConv(self.features, 3, rate, dtype=self.dtype, param_dtype=self.param_dtype, name=f"conv{i}")(x)
      else:
        y = conv(self.features, (3, 3), padding=symmetric_padding(3, rate), kernel_dilation=rate, name=f"conv{i}")(x)
      branches.append(norm(activation="relu", name=f"bn{i}")(y))
    # Image pooling: the global mean in float32 (a bfloat16 sum over a large map would round), then 1x1 + BN.
    pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2), keepdims=True).astype(x.dtype)
    pooled = conv(self.features, (1, 1), padding="VALID", name="pool_conv")(pooled)
    pooled = norm(activation="relu", name="pool_bn")(pooled)
    # Bilinear resizing of a 1x1 map (torchvision, SMP) is a broadcast.
    branches.append(jnp.broadcast_to(pooled, (pooled.shape[0], h, w, pooled.shape[-1])))
    y = conv(self.features, (1, 1), padding="VALID", name="project")(jnp.concatenate(branches, axis=-1))
    y = norm(activation="relu", name="project_bn")(y)
    return nn.Dropout(self.dropout_rate, deterministic=not train)(y)


def _classifier(num_classes: int, dtype: Dtype, param_dtype: Dtype, name: str) -> nn.Module:
  # Small initial logits (MMSeg's decode heads start the classifier at N(0, 0.01^2)).
  return Conv(num_classes, (1, 1), kernel_init=nn.initializers.normal(0.01), dtype=dtype, param_dtype=param_dtype,
              name=name)


class _DeepLab(nn.Module):
  """What DeepLabV3 and DeepLabV3+ share: their options (documented on each) and the encoder, a dilated ResNet
  (`backbone`) with an ASPP (`aspp`) on its layer4, built in the subclasses' compact `__call__` so the parameter
  paths stay `backbone/...` and `aspp/...`."""

  num_classes: int
  depth: int = 50
  output_stride: int = 16
  atrous_rates: tuple[int, ...] = ()
  dropout_rate: float = 0.5
  width: int = 64
  stem_width: int = 64
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def _encoder(self, x: jax.Array, *, train: bool, contract_dilation: bool,
               separable: bool) -> tuple[dict[str, jax.Array], jax.Array, int]:
    """(the backbone's features, the ASPP's output, the heads' channel count) of images `x`."""
    model = type(self).__name__
    check_images(x, model)
    rates = _rates(self.output_stride, self.atrous_rates, model)
    features = ResNet(depth=self.depth, output_stride=self.output_stride, stem="standard",
                      stem_width=self.stem_width, width=self.width, contract_dilation=contract_dilation,
                      dtype=self.dtype, param_dtype=self.param_dtype, name="backbone")(x, train=train)
    channels = 256 * self.width // 64
    y = ASPP(rates, channels, separable=separable, dropout_rate=self.dropout_rate, dtype=self.dtype,
             param_dtype=self.param_dtype, name="aspp")(features["layer4"], train=train)
    return features, y, channels


class DeepLabV3(_DeepLab):
  """DeepLabV3 (torchvision's) on a dilated ResNet: [B, H, W, C] (any size) -> float32 logits [B, H, W, K].

  With `train=True` and `aux_head`, the auxiliary FCN logits on layer3 (resized to H, W, float32) are sown as
  `("aux", "logits")`; their parameters are created at initialisation, and the head is skipped in evaluation.

  Attributes:
    num_classes: K.
    depth: ResNet depth, 50 or 101 (152 works too).
    output_stride: 8 (torchvision, the paper's best) or 16 (cheaper: layer3 keeps its stride).
    atrous_rates: ASPP dilations; () picks the paper's for the output stride (12/24/36 at 8, 6/12/18 at 16).
    dropout_rate: dropout after the ASPP projection (0.5).
    aux_head: build torchvision's auxiliary FCNHead on layer3 (`aux_loss=True`).
    aux_dropout_rate: the auxiliary head's dropout (0.1).
    width: the ResNet's base width (64); the heads' 256 channels scale with it. Smaller only for tests.
    stem_width: channels of the 7x7 stem convolution (64); smaller only for tests.
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  output_stride: int = 8
  aux_head: bool = True
  aux_dropout_rate: float = 0.1

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    size = x.shape[1:3]
    # torchvision's replace_stride_with_dilation: a dilated stage's first block keeps the previous dilation.
    features, y, channels = self._encoder(x, train=train, contract_dilation=True, separable=False)
    conv, norm = _layers(self.dtype, self.param_dtype, train)
    y = conv(channels, (3, 3), padding=symmetric_padding(3), name="head_conv")(y)
    y = norm(activation="relu", name="head_bn")(y)
    logits = _classifier(self.num_classes, self.dtype, self.param_dtype, "classifier")(y)
    # Resize in float32: bfloat16 logits would round the interpolation weights.
    logits = resize_bilinear(logits.astype(jnp.float32), size, align_corners=False)

    # Evaluation skips the auxiliary head, but initialisation must still create its parameters.
    if self.aux_head and (train or self.is_initializing()):
      layer3 = features["layer3"]
      a = conv(layer3.shape[-1] // 4, (3, 3), padding=symmetric_padding(3), name="aux_conv")(layer3)
      a = norm(activation="relu", name="aux_bn")(a)
      a = nn.Dropout(self.aux_dropout_rate, deterministic=not train)(a)
      a = _classifier(self.num_classes, self.dtype, self.param_dtype, "aux_classifier")(a)
      a = resize_bilinear(a.astype(jnp.float32), size, align_corners=False)
      if train:
        self.sow("aux", "logits", a)
    return logits


class DeepLabV3Plus(_DeepLab):
  """DeepLabV3+ (SMP's) on a dilated ResNet: [B, H, W, C] (any size) -> float32 logits [B, H, W, K].

  For inputs whose sides are multiples of `output_stride` (SMP requires that) this is SMP's function; other sizes
  are accepted, the decoder resizing the ASPP output to layer1's size and the logits to the input's.

  Attributes:
    num_classes: K.
    depth: ResNet depth, 50 or 101 (152 works too).
    output_stride: 16 (SMP's default and the paper's) or 8.
    atrous_rates: ASPP dilations; () picks the paper's for the output stride (6/12/18 at 16, 12/24/36 at 8);
      (12, 24, 36) is SMP's default at either stride.
    dropout_rate: dropout after the ASPP projection (0.5).
    width: the ResNet's base width (64); the decoder's 256 and 48 channels scale with it. Smaller only for tests.
    stem_width: channels of the 7x7 stem convolution (64); smaller only for tests.
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  output_stride: int = 16

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    size = x.shape[1:3]
    # SMP dilates every convolution of a stride-free stage alike (no contracted first block).
    features, y, channels = self._encoder(x, train=train, contract_dilation=False, separable=True)
    conv, norm = _layers(self.dtype, self.param_dtype, train)
    separable = functools.partial(SeparableConv, dtype=self.dtype, param_dtype=self.param_dtype)
    y = separable(channels, name="aspp_conv")(y)
    y = norm(activation="relu", name="aspp_bn")(y)

    low = features["layer1"]
    # 48 low-level channels (paper, Sec. 4.1): few enough not to outweigh the 256 encoder channels.
    low = conv(48 * self.width // 64, (1, 1), padding="VALID", name="low_conv")(low)
    low = norm(activation="relu", name="low_bn")(low)
    # SMP's nn.Upsample(scale_factor=4, align_corners=True): the 1/16 map to layer1's 1/4 size.
    y = resize_bilinear(y, low.shape[1:3], align_corners=True)
    y = separable(channels, name="fuse_conv")(jnp.concatenate([y, low], axis=-1))
    y = norm(activation="relu", name="fuse_bn")(y)
    logits = _classifier(self.num_classes, self.dtype, self.param_dtype, "classifier")(y)
    # SMP's segmentation head upsamples x4 with aligned corners; in float32 (bfloat16 would round the weights).
    return resize_bilinear(logits.astype(jnp.float32), size, align_corners=True)
