"""The ResNet-FPN backbone of Mask R-CNN (Lin et al., "Feature Pyramid Networks for Object Detection", CVPR 2017)
as torchvision builds it (torchvision/ops/feature_pyramid_network.py, models/detection/backbone_utils.py
`resnet_fpn_backbone`), and a small backbone with the same outputs for CPU recipes.

The pyramid: a 1x1 lateral convolution ("inner block") per ResNet stage layer1..layer4, a top-down path adding the
coarser merged map upsampled (nearest, to the lateral's size) to each lateral, a 3x3 convolution ("layer block")
on every merged map, and P6 ("pool") = max_pool(kernel 1, stride 2) of P5 (torchvision's LastLevelMaxPool). All
levels have `channels` channels; outputs are named as torchvision's: "0".."3" (strides 4..32) and "pool" (64).

Frozen BatchNorm (torchvision's FrozenBatchNorm2d, which the pretrained Mask R-CNN uses): the BN layers always
normalise with their running statistics, so the ResNet runs with train=False whatever the model's mode; that the
BN scale/bias and the frozen stages (torchvision's trainable_backbone_layers) get no update is the optimiser's
business: `segjax.models.detection.mask_rcnn.trainable_mask` says which parameters train.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.backbones.resnet import ResNet
from segjax.models.layers import Dtype, batch_norm_partial, symmetric_padding
from segjax.ops.conv import Conv

LEVELS = ("0", "1", "2", "3", "pool")  # torchvision's names of P2..P6
STAGES = ("layer1", "layer2", "layer3", "layer4")

# torchvision's FPN: kaiming_uniform_(a=1) kernels (gain 1, bound sqrt(3 / fan_in)), zero biases.
fpn_init = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")


def upsample_nearest(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """PyTorch's F.interpolate(mode="nearest") of [B, h, w, C] to `size`: source index floor(dst * in / out)."""
  _, h, w, _ = x.shape
  oh, ow = size
  if (oh, ow) == (2 * h, 2 * w):  # the usual FPN case (sizes multiples of 32): a plain repeat
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
  rows = jnp.minimum(jnp.floor(jnp.arange(oh) * jnp.float32(h / oh)).astype(jnp.int32), h - 1)
  cols = jnp.minimum(jnp.floor(jnp.arange(ow) * jnp.float32(w / ow)).astype(jnp.int32), w - 1)
  return x[:, rows][:, :, cols]


class FPN(nn.Module):
  """torchvision's FeaturePyramidNetwork + LastLevelMaxPool: stage maps (finest first) -> {"0".."3", "pool"}.

  Attributes:
    channels: channels of every pyramid level (256 in torchvision).
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  channels: int = 256
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, features: list[jax.Array]) -> dict[str, jax.Array]:
    conv = functools.partial(Conv, self.channels, kernel_init=fpn_init, dtype=self.dtype,
                             param_dtype=self.param_dtype)
    inner = [conv((1, 1), padding="VALID", name=f"inner_blocks_{i}") for i in range(len(features))]
    layer = [conv((3, 3), padding=symmetric_padding(3), name=f"layer_blocks_{i}") for i in range(len(features))]
    last = inner[-1](features[-1])
    results = [layer[-1](last)]
    for i in range(len(features) - 2, -1, -1):
      lateral = inner[i](features[i])
      last = lateral + upsample_nearest(last, lateral.shape[1:3])
      results.insert(0, layer[i](last))
    results.append(results[-1][:, ::2, ::2])  # max_pool2d(kernel 1, stride 2): every other pixel
    return dict(zip(LEVELS, results))


class SmallBackbone(nn.Module):
  """Four plain stages of 3x3 convolutions + BN + ReLU with strides 4, 8, 16, 32 (for CPU recipes and tests).

  Returns {"layer1".."layer4"} as ResNet does, with `widths` channels. Stage 1 is two stride-2 convolutions;
  each later stage one stride-2 and one stride-1 convolution.

  Attributes:
    widths: channels of the four stages.
    frozen_bn: BN always uses its running statistics (as the frozen ResNet).
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  widths: tuple[int, int, int, int] = (16, 32, 64, 128)
  frozen_bn: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> dict[str, jax.Array]:
    conv = functools.partial(Conv, use_bias=False, padding=symmetric_padding(3), dtype=self.dtype,
                             param_dtype=self.param_dtype,
                             kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"))
    norm = batch_norm_partial(self.dtype, self.param_dtype, train=train and not self.frozen_bn)
    x = x.astype(self.dtype)
    outputs = {}
    for stage, width in enumerate(self.widths):
      strides = (2, 2) if stage == 0 else (2, 1)
      for i, s in enumerate(strides):
        x = conv(width, (3, 3), strides=s, name=f"stage{stage + 1}_conv{i + 1}")(x)
        x = norm(name=f"stage{stage + 1}_bn{i + 1}", activation="relu")(x)
      outputs[STAGES[stage]] = x
    return outputs


class BackboneWithFPN(nn.Module):
  """Backbone ("body") + FPN ("fpn"), torchvision's BackboneWithFPN: [B, H, W, 3] -> {"0".."3", "pool"}.

  Attributes:
    backbone: "resnet50", "resnet101" or "small".
    frozen_bn: the backbone's BN always uses running statistics (torchvision's FrozenBatchNorm2d).
    channels: FPN channels.
    small_widths: the small backbone's stage widths.
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  backbone: str = "resnet50"
  frozen_bn: bool = True
  channels: int = 256
  small_widths: tuple[int, int, int, int] = (16, 32, 64, 128)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> dict[str, jax.Array]:
    if self.backbone in ("resnet50", "resnet101"):
      body = ResNet(depth=int(self.backbone[6:]), dtype=self.dtype, param_dtype=self.param_dtype, name="body")
      stages = body(x, train=train and not self.frozen_bn)
    elif self.backbone == "small":
      stages = SmallBackbone(self.small_widths, frozen_bn=self.frozen_bn, dtype=self.dtype,
                             param_dtype=self.param_dtype, name="body")(x, train=train)
    else:
      raise ValueError(f"Mask R-CNN backbone must be 'resnet50', 'resnet101' or 'small', got {self.backbone!r}")
    return FPN(self.channels, dtype=self.dtype, param_dtype=self.param_dtype, name="fpn")(
        [stages[s] for s in STAGES])


def trainable_backbone_mask(path: tuple[str, ...], trainable_layers: int, frozen_bn: bool) -> bool:
  """Whether the backbone parameter at `path` (relative to the backbone's "body") trains.

  torchvision's rule (backbone_utils._resnet_fpn_extractor): of ["layer4", "layer3", "layer2", "layer1",
  "conv1"] the first `trainable_layers` train (with 5 also "bn1"), the rest of the ResNet is frozen; frozen BN's
  scale and bias never train. The small backbone has no frozen stages.
  """
  name = path[0]
  is_bn = any(p.startswith(("bn", "downsample_1")) or "_bn" in p for p in path[:-1])
  if frozen_bn and is_bn:
    return False
  if name.startswith("stage"):  # the small backbone
    return True
  trainable = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
  if trainable_layers == 5:
    trainable.append("bn1")
  return any(name == t or name.startswith(t + "_") for t in trainable)
