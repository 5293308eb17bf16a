"""ResNet-18/34/50/101/152 (He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016) as a
dense-prediction backbone.

ResNet-18/34 are built from basic blocks (two 3x3 convolutions, torchvision's `BasicBlock`, stride in the first),
ResNet-50/101/152 from bottlenecks; the stage outputs have 64..512 channels with basic blocks and 256..2048 with
bottlenecks. A dilated basic block dilates its first 3x3 convolution only, as MMSegmentation's `BasicBlock`
(torchvision refuses dilation in basic blocks).

The blocks are torchvision's bottleneck "v1.5": the stride of a downsampling block sits in its 3x3 convolution
(the paper's Table 1 puts it in the first 1x1). For segmentation the last stages can trade their stride for
dilation (Chen et al., DeepLab, TPAMI 2018; Zhao et al., PSPNet, CVPR 2017), so layer4 ends at 1/8 or 1/16 of
the input instead of 1/32:

  output_stride  strides (layer1..4)  dilations (layer1..4)
  32             1, 2, 2, 2           1, 1, 1, 1
  16             1, 2, 2, 1           1, 1, 1, 2
  8              1, 2, 1, 1           1, 1, 2, 4

Every 3x3 convolution of a dilated stage uses the stage's dilation, as in hszhao/semseg (PSPNet's reference
code) and MMSegmentation; torchvision's `replace_stride_with_dilation` instead keeps the previous dilation in a
stage's first block, which `contract_dilation=True` reproduces (MMSegmentation's option of the same name).

Two stems: "standard" is torchvision's 7x7/2 convolution; "deep" is three 3x3 convolutions
(stem_width, stem_width, 2 * stem_width), the first with stride 2, as in hszhao/semseg's `deep_base` ResNet
(stem_width=64, 64-64-128, the backbone PSPNet was trained with) and MMSegmentation's ResNetV1c (stem_width=32,
32-32-64; "ResNet-C" of He et al., "Bag of Tricks", CVPR 2019). Both are followed by a 3x3/2 max pool.

Padding is explicit and symmetric as in PyTorch (not XLA's "SAME", which pads strided convolutions on the
bottom/right only), so torchvision / semseg / MMSegmentation weights compute the same function here. Parameter
paths follow torchvision's names: `layer3_0/conv2/kernel` is `layer3.0.conv2.weight` (transposed to HWIO),
`layer3_0/downsample_0` and `downsample_1` are `layer3.0.downsample.0` (1x1 conv) and `.1` (BN), and the stem is
`conv1`/`bn1` (plus `conv2`/`bn2`/`conv3`/`bn3` for the deep stem, semseg's names).

`stride_in_1x1=True` is the original ResNet v1 ("caffe" style, MMSegmentation's `style='caffe'`): a downsampling
block strides in its first 1x1 convolution, as the paper's Table 1, Caffe's and Keras' ResNet50/101 do. Keras
ImageNet weights need it; they also have convolution biases before every BN and BN epsilon 1.001e-5, which
segjax.weights folds into the BN statistics exactly (mean - bias; var + 1.001e-5 - 1e-5), so the blocks here stay
bias-free with epsilon 1e-5 in both styles and the parameter shapes are the same.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.layers import Dtype, batch_norm_partial, check_images, symmetric_padding
from segjax.ops.conv import Conv

# Bottleneck blocks per stage, He et al. 2016, Table 1.
STAGE_BLOCKS: dict[int, tuple[int, int, int, int]] = {
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}
EXPANSION = 4  # a bottleneck's output has 4x the channels of its 3x3 convolution
# Basic blocks per stage for the shallower nets (He et al. 2016, Table 1); their output has the 3x3s' channels.
BASIC_STAGE_BLOCKS: dict[int, tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
}

# torchvision (and semseg, MMSeg) initialise convolutions with kaiming_normal_(mode="fan_out", relu): an
# untruncated normal with variance 2 / (kh * kw * out_channels).
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def stage_strides_and_dilations(output_stride: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """Strides and dilations of layer1..layer4 for an output stride of 8, 16 or 32 (table in the module doc)."""
  table = {
      32: ((1, 2, 2, 2), (1, 1, 1, 1)),
      16: ((1, 2, 2, 1), (1, 1, 1, 2)),
      8: ((1, 2, 1, 1), (1, 1, 2, 4)),
  }
  if output_stride not in table:
    raise ValueError(f"ResNet output_stride must be 8, 16 or 32, got {output_stride}")
  return table[output_stride]


def _conv_and_norm(dtype: Dtype, param_dtype: Dtype, train: bool):
  """The bias-free convolution and the BatchNorm constructors of every ResNet layer (torchvision's)."""
  conv = functools.partial(Conv, use_bias=False, kernel_init=conv_init, dtype=dtype, param_dtype=param_dtype)
  return conv, batch_norm_partial(dtype, param_dtype, train=train)


class Bottleneck(nn.Module):
  """1x1 -> 3x3 (stride, dilation) -> 1x1 residual block: [B, H, W, Cin] -> [B, H/s, W/s, 4 * features].

  Attributes:
    features: channels of the 1x1 and 3x3 convolutions; the block outputs `4 * features`.
    strides: stride of the 3x3 convolution (v1.5) or of the first 1x1 one (`stride_in_1x1`), and of the
      projection shortcut.
    dilation: dilation (and padding) of the 3x3 convolution.
    project: 1x1 convolution + BN on the shortcut (needed when the shape changes).
    zero_init_last_bn: start the last BN's scale at 0 so the block starts as the identity (Goyal et al. 2017).
    stride_in_1x1: stride in the first 1x1 convolution instead of the 3x3 (ResNet v1, "caffe" style).
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  features: int
  strides: int = 1
  dilation: int = 1
  project: bool = False
  zero_init_last_bn: bool = False
  stride_in_1x1: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    conv, norm = _conv_and_norm(self.dtype, self.param_dtype, train)
    d = self.dilation
    s1, s3 = (self.strides, 1) if self.stride_in_1x1 else (1, self.strides)
    y = conv(self.features, (1, 1), strides=s1, padding="VALID", name="conv1")(x)
    y = norm(name="bn1", activation="relu")(y)
    y = conv(self.features, (3, 3), strides=s3, padding=symmetric_padding(3, d), kernel_dilation=d, name="conv2")(y)
    y = norm(name="bn2", activation="relu")(y)
    y = conv(EXPANSION * self.features, (1, 1), padding="VALID", name="conv3")(y)
    last_scale = nn.initializers.zeros if self.zero_init_last_bn else nn.initializers.ones
    y = norm(scale_init=last_scale, name="bn3")(y)
    shortcut = x
    if self.project:
      shortcut = conv(EXPANSION * self.features, (1, 1), strides=self.strides, padding="VALID",
                      name="downsample_0")(x)
      shortcut = norm(name="downsample_1")(shortcut)
    return nn.relu(y + shortcut)


class BasicBlock(nn.Module):
  """3x3 (stride, dilation) -> 3x3 residual block of ResNet-18/34: [B, H, W, Cin] -> [B, H/s, W/s, features].

  Parameter names are torchvision's (`conv1`, `bn1`, `conv2`, `bn2`, `downsample_0`, `downsample_1`).

  Attributes:
    features: channels of both convolutions and of the output.
    strides: stride of the first convolution and of the projection shortcut.
    dilation: dilation (and padding) of the first convolution (MMSegmentation's BasicBlock).
    project: 1x1 convolution + BN on the shortcut (needed when the shape changes).
    zero_init_last_bn: start bn2's scale at 0 so the block starts as the identity (Goyal et al. 2017).
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  features: int
  strides: int = 1
  dilation: int = 1
  project: bool = False
  zero_init_last_bn: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    conv, norm = _conv_and_norm(self.dtype, self.param_dtype, train)
    d = self.dilation
    y = conv(self.features, (3, 3), strides=self.strides, padding=symmetric_padding(3, d), kernel_dilation=d,
             name="conv1")(x)
    y = norm(name="bn1", activation="relu")(y)
    y = conv(self.features, (3, 3), padding=symmetric_padding(3), name="conv2")(y)
    last_scale = nn.initializers.zeros if self.zero_init_last_bn else nn.initializers.ones
    y = norm(scale_init=last_scale, name="bn2")(y)
    shortcut = x
    if self.project:
      shortcut = conv(self.features, (1, 1), strides=self.strides, padding="VALID", name="downsample_0")(x)
      shortcut = norm(name="downsample_1")(shortcut)
    return nn.relu(y + shortcut)


class ResNet(nn.Module):
  """ResNet (basic blocks for depth 18/34, bottlenecks for 50/101/152) returning its stage outputs; any input size.

  `__call__(x [B, H, W, C], train=...)` returns a dict (strides for output_stride=32; with dilation the later
  stages stop at 8 or 16; sizes are ceil(H / stride) as in PyTorch):
    "stem":   [B, H/2, W/2, stem channels] after the stem convolutions, before the max pool (stem_width channels
              for the standard stem, 2 * stem_width for the deep one);
    "layer1": [B, H/4, W/4, 4 * width];      "layer2": [B, H/8, W/8, 8 * width];
    "layer3": [B, H/16, W/16, 16 * width];   "layer4": [B, H/32, W/32, 32 * width]
  (a quarter of those channels, width .. 8 * width, for the basic-block ResNet-18/34).

  Attributes:
    depth: 18, 34 (basic blocks), 50, 101 or 152 (bottlenecks); blocks per stage from He et al. 2016, Table 1.
    output_stride: 8, 16 or 32; strides of layer3/layer4 become dilations below 32.
    stem: "standard" (7x7/2 convolution, torchvision) or "deep" (three 3x3 convolutions, semseg / ResNetV1c).
    stem_width: channels of the 7x7 convolution ("standard"), or of the first two deep-stem convolutions, the
      third having twice as many (64: semseg's 64-64-128; 32: MMSeg ResNetV1c's 32-32-64).
    width: channels of layer1's 3x3 convolutions, doubled per stage (64 in the paper; smaller only for tests).
    contract_dilation: give the first block of a dilated stage half the stage's dilation (torchvision's
      `replace_stride_with_dilation`; MMSeg's `contract_dilation`). Off for semseg's and MMSeg's PSPNet.
    zero_init_residual: initialise every block's last BN scale to zero (torchvision's option of the same name).
    stride_in_1x1: ResNet v1 / "caffe" blocks, striding in the first 1x1 convolution (Keras and Caffe weights);
      False is torchvision's v1.5 (stride in the 3x3). Bottlenecks only.
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  depth: int = 50
  output_stride: int = 32
  stem: str = "standard"
  stem_width: int = 64
  width: int = 64
  contract_dilation: bool = False
  zero_init_residual: bool = False
  stride_in_1x1: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> dict[str, jax.Array]:
    basic = self.depth in BASIC_STAGE_BLOCKS
    if not basic and self.depth not in STAGE_BLOCKS:
      depths = sorted({**BASIC_STAGE_BLOCKS, **STAGE_BLOCKS})
      raise ValueError(f"ResNet depth must be one of {depths}, got {self.depth}")
    if basic and self.stride_in_1x1:
      raise ValueError(f"ResNet-{self.depth} has basic blocks (no 1x1 convolution); stride_in_1x1 needs depth >= 50")
    if self.stem not in ("standard", "deep"):
      raise ValueError(f"ResNet stem must be 'standard' or 'deep', got {self.stem!r}")
    check_images(x, "ResNet")
    strides, dilations = stage_strides_and_dilations(self.output_stride)
    conv, norm = _conv_and_norm(self.dtype, self.param_dtype, train)

    x = x.astype(self.dtype)
    if self.stem == "standard":
      x = conv(self.stem_width, (7, 7), strides=2, padding=symmetric_padding(7), name="conv1")(x)
      x = norm(name="bn1", activation="relu")(x)
    else:
      widths = (self.stem_width, self.stem_width, 2 * self.stem_width)
      for i, features in enumerate(widths):
        x = conv(features, (3, 3), strides=2 if i == 0 else 1, padding=symmetric_padding(3), name=f"conv{i + 1}")(x)
        x = norm(name=f"bn{i + 1}", activation="relu")(x)
    outputs = {"stem": x}
    # PyTorch's MaxPool2d(3, 2, padding=1) pads with -inf, as reduce_window's padding does here.
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))

    table = BASIC_STAGE_BLOCKS if basic else STAGE_BLOCKS
    expansion = 1 if basic else EXPANSION
    for stage, num_blocks in enumerate(table[self.depth]):
      features = self.width * 2**stage
      dilation = dilations[stage]
      for i in range(num_blocks):
        stride = strides[stage] if i == 0 else 1
        block_dilation = dilation
        if i == 0 and self.contract_dilation and dilation > 1:
          block_dilation = dilation // 2
        # torchvision's rule: project the shortcut whenever the block changes the shape.
        project = stride != 1 or x.shape[-1] != expansion * features
        common = dict(strides=stride, dilation=block_dilation, project=project,
                      zero_init_last_bn=self.zero_init_residual, dtype=self.dtype, param_dtype=self.param_dtype,
                      name=f"layer{stage + 1}_{i}")
        if basic:
          x = BasicBlock(features, **common)(x, train=train)
        else:
          x = Bottleneck(features, stride_in_1x1=self.stride_in_1x1, **common)(x, train=train)
      outputs[f"layer{stage + 1}"] = x
    return outputs
