"""Model registry: a plain dict from name to Flax module class.

Every module takes `num_classes` and returns float32 logits [B, H, W, K] from `__call__(x, *, train)`, with the
input's height and width. Optional hooks a module may expose:
- `size_divisor`: the input height and width must be multiples of it;
- `min_input_size`: the smallest side it accepts (parameters are initialised at this size);
- `output_size(n)`, `input_size_for(n)`, `input_margin`: valid-convolution nets (the original U-Net) whose
  output is smaller than their input. Training centre-crops the labels to the output; inference mirror-pads
  the input by the margin (overlap-tile);
- auxiliary heads: in training a module may `self.sow("aux", "logits", aux_logits)` with input-sized logits;
  the training step adds `config.loss.aux_weight` times the same loss on each.

One file per model family; the blocks several families share (convolution blocks, pooling, crops, aligned
upsampling, input checks) are in `segjax.models.layers`, the encoders in `segjax.models.backbones`. A family file
imports only from those and `segjax.ops`, never from another family.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from segjax.models.context import ContextNet
from segjax.models.deconvnet import DeconvNet
from segjax.models.deeplab import DeepLabLargeFOV
from segjax.models.deeplabv3 import DeepLabV3, DeepLabV3Plus
from segjax.models.fcn import FCN8s, FCN16s, FCN32s
from segjax.models.patch_classifier import PatchClassifier
from segjax.models.pspnet import PSPNet
from segjax.models.segnet import SegNet, SegNetBasic
from segjax.models.smp import SmpFPN, SmpUnet
from segjax.models.small_fcn import FCNNearest, FCNSkipConcat, FCNTransposedSkip
from segjax.models.tied import TiedConvDeconv
from segjax.models.unet import UNet, UNetValid
from segjax.models.unet_vgg import UNetVGG16

MODELS: dict[str, type[nn.Module]] = {
    "patch_classifier": PatchClassifier,
    "fcn_nearest": FCNNearest,
    "fcn_skip_concat": FCNSkipConcat,
    "fcn_transposed_skip": FCNTransposedSkip,
    "fcn32s": FCN32s,
    "fcn16s": FCN16s,
    "fcn8s": FCN8s,
    "segnet": SegNet,
    "segnet_basic": SegNetBasic,
    "deconvnet": DeconvNet,
    "unet": UNet,
    "unet_valid": UNetValid,
    "unet_vgg16": UNetVGG16,
    "deeplab_largefov": DeepLabLargeFOV,
    "dilated_context": ContextNet,
    "pspnet": PSPNet,
    "deeplabv3": DeepLabV3,
    "deeplabv3plus": DeepLabV3Plus,
    "tied_conv_deconv": TiedConvDeconv,
    "smp_unet": SmpUnet,
    "smp_fpn": SmpFPN,
}

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def build_model(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
  """Instantiates registry entry `name`; `dtype`/`param_dtype` may be given as strings.

  Raises:
    ValueError: unknown model name or a keyword the model does not have, naming the valid choices.
  """
  if name not in MODELS:
    raise ValueError(f"Unknown model {name!r}; known models: {sorted(MODELS)}. Set --config.model.name.")
  cls = MODELS[name]
  fields = {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}
  unknown = sorted(set(kwargs) - fields)
  if unknown:
    raise ValueError(f"Model {name!r} has no option(s) {unknown}; its options are {sorted(fields - {'num_classes'})}.")
  kwargs = dict(kwargs)
  for key in ("dtype", "param_dtype"):
    if isinstance(kwargs.get(key), str):
      if kwargs[key] not in _DTYPES:
        raise ValueError(f"model.{key}={kwargs[key]!r} is not one of {sorted(_DTYPES)}")
      kwargs[key] = _DTYPES[kwargs[key]]
  return cls(num_classes=num_classes, **kwargs)


def size_divisor(model: nn.Module) -> int:
  return int(getattr(model, "size_divisor", 1))


def is_valid_conv(model: nn.Module) -> bool:
  """True for nets whose output is smaller than their input (unpadded convolutions)."""
  return hasattr(model, "input_size_for")


def output_size(model: nn.Module, size: int) -> int:
  """Output side for an input side `size` (raises ValueError for an input the model cannot take)."""
  return int(model.output_size(size)) if is_valid_conv(model) else size


def init_size(model: nn.Module) -> int:
  """A small input side at which the model can be initialised (parameter shapes do not depend on it)."""
  if is_valid_conv(model):
    return int(model.input_size_for(1))
  d = size_divisor(model)
  return max(d, -(-int(getattr(model, "min_input_size", 1)) // d) * d)


def model_config(name: str, **overrides: Any) -> ml_collections.ConfigDict:
  """A `config.model` block for registry entry `name`: its constructor options with their defaults.

  Recipes start from this so every option of the chosen model can be set on the command line
  (`--config.model.dropout_rate=0.5`), and a misspelt one is an error.
  """
  if name not in MODELS:
    raise ValueError(f"Unknown model {name!r}; known models: {sorted(MODELS)}.")
  return config_block(name, MODELS[name], **overrides)


def config_block(name: str, cls: type, skip: Sequence[str] = (), **overrides: Any) -> ml_collections.ConfigDict:
  """The `config.model` block named `name` of Flax module class `cls`: every constructor option with a default
  (but `skip`), dtypes as strings; `overrides` must name options it has."""
  block = ml_collections.ConfigDict()
  block.name = name
  for field in dataclasses.fields(cls):
    if (field.name in ("parent", "name", "num_classes", "param_dtype", *skip)
        or field.default is dataclasses.MISSING):
      continue
    value = field.default
    if field.name == "dtype":
      value = {v: k for k, v in _DTYPES.items()}.get(value, "float32")
    block[field.name] = value
  for key, value in overrides.items():
    if key not in block:
      raise ValueError(f"Model {name!r} has no option {key!r}; its options are {sorted(block)}.")
    block[key] = value
  return block


def model_kwargs(model_config: Mapping[str, Any]) -> dict[str, Any]:
  """The constructor keywords in a `config.model` block (everything but `name`)."""
  return {k: v for k, v in dict(model_config).items() if k != "name"}
