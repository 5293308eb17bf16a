"""Pretrained backbone weights: Keras `.h5` (keras-applications layout) and torchvision state dicts (`.pth`, `.pt`,
`.safetensors`) loaded into a segjax model's VGG16 / ResNet backbone. docs/weights.md says where to get the files;
segjax.weight_files reads them, this module checks them against a model and the recipe.

Conventions handled (each exact, except the grayscale one):
- Layouts: torch's OIHW kernels become HWIO; BatchNorm weight/bias/running_mean/running_var become
  params scale/bias and batch_stats mean/var; Keras kernels are already HWIO.
- Colour order: Keras (Caffe-converted) networks take BGR. The first convolution's input-channel axis is flipped,
  so every segjax model takes RGB; `input_normalization` gives the matching mean/std in RGB order.
- Keras ResNet50/101 are ResNet v1 ("caffe" style): stride in the first 1x1 convolution (the model needs
  `stride_in_1x1=True`), a bias on every convolution and BN epsilon 1.001e-5. A bias b before a BN (mean m,
  variance v, epsilon 1.001e-5) is the same function as no bias and a BN with mean m - b, variance
  v + 1.001e-5 - 1e-5 and segjax's epsilon 1e-5: that is what is stored.
- Grayscale datasets (1 channel): the first convolution's kernel is summed over its 3 input channels (a gray
  image seen as R = G = B, as timm's `adapt_input_conv`), and the normalisation is the mean of the 3 channels'.
  This is an approximation where the channels' means/stds differ (they do, slightly).

The file's architecture is read from its keys and must be the model's (a VGG16 file may also initialise the
convolutions of a VGG16-BN model, whose BatchNorms then stay at their initialisation, as SegNet was trained).
Every array's shape is checked against the model; nothing is loaded partially without being reported.

VGG16 files with the classifier (torchvision's always; Keras' `include_top` ones) also give fc6/fc7, VGG16's
first two fully connected layers as 7x7 and 1x1 convolutions (the FCN paper's "convolutionalization"; the 25088
inputs of fc6 are pool5's 7x7x512, flattened channels-last by Keras and channels-first by torch). They are
loaded beside the backbone where the model has `fc6`/`fc7` of exactly those shapes (FCN, DeconvNet) and
otherwise left at initialisation and listed in the report (DeepLab's fc6 is a 3x3 of 1024 channels).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

import numpy as np

from segjax import weight_files

FORMATS = ("auto", "keras_h5", "torch")
ARCHITECTURES = ("auto", "vgg16", "vgg16_bn", "resnet50", "resnet101")
_EXTENSIONS = {".h5": "keras_h5", ".hdf5": "keras_h5", ".pth": "torch", ".pt": "torch", ".bin": "torch",
               ".safetensors": "torch"}
# Subtrees of segjax models that hold a VGG16 or ResNet backbone (FCN, DeepLab, PSPNet, ContextNet: "backbone";
# SegNet, DeconvNet, U-Net-VGG16: "encoder").
_TARGETS = ("backbone", "encoder")

# "caffe" preprocessing of keras.applications.{vgg16,resnet}.preprocess_input (BGR means), in RGB order.
CAFFE_MEAN_RGB = (123.68, 116.779, 103.939)
IMAGENET_MEAN = tuple(255.0 * m for m in (0.485, 0.456, 0.406))  # torchvision's ImageNet statistics
IMAGENET_STD = tuple(255.0 * s for s in (0.229, 0.224, 0.225))

Path = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class LoadReport:
  """What `load_into` did: paths are "/"-joined parameter paths of the whole model."""

  path: str
  format: str
  architecture: str
  target: str
  loaded: tuple[str, ...]
  left_at_init: tuple[str, ...]
  ignored: tuple[str, ...]
  num_loaded: int  # scalars of the params collection taken from the file
  num_left_at_init: int  # scalars of the params collection keeping their initialisation

  def summary(self) -> str:
    heads = sorted({p.split("/")[0] for p in self.left_at_init})
    return (f"init_from {self.path} ({self.format}, {self.architecture}) -> params[{self.target!r}]: "
            f"{self.num_loaded:,} parameters loaded ({len(self.loaded)} arrays incl. batch_stats), "
            f"{self.num_left_at_init:,} left at initialisation (in {heads}); "
            f"{len(self.ignored)} file keys not used{': ' + ', '.join(self.ignored[:6]) if self.ignored else ''}"
            f"{' ...' if len(self.ignored) > 6 else ''}")


# ---------------------------------------------------------------------------------------------- configuration


def resolve_format(path: str | None, fmt: str) -> str:
  """`fmt`, or for "auto" the format named by `path`'s extension (.h5/.hdf5: keras_h5; .pth/.pt/.bin/.safetensors:
  torch). Needs no file, so eval and predict derive the normalisation from the config alone."""
  if fmt != "auto":
    return fmt
  ext = os.path.splitext(str(path))[1].lower()
  if ext not in _EXTENSIONS:
    raise ValueError(f"config.init_from.path={path!r}: cannot tell the format from the extension {ext!r} (known: "
                     f"{sorted(_EXTENSIONS)}); set config.init_from.format to 'keras_h5' or 'torch'")
  return _EXTENSIONS[ext]


def input_normalization(format: str, architecture: str = "auto",  # pylint: disable=redefined-builtin
                        num_channels: int = 3) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """(mean, std) in 0..255 units, RGB order, of the input the pretrained weights expect after `load_into`.

  Args:
    format: "keras_h5" (Keras VGG16 / ResNet50 / ResNet101: Caffe's mean subtraction, std 1) or "torch"
      (torchvision's ImageNet mean and std).
    architecture: one of ARCHITECTURES; only checked (Keras has no VGG16-BN).
    num_channels: 1 for grayscale datasets: the mean of the 3 channels' values (see the module docstring).
  """
  if architecture not in ARCHITECTURES:
    raise ValueError(f"config.init_from.architecture={architecture!r}: choose one of {ARCHITECTURES}")
  if format == "keras_h5":
    if architecture == "vgg16_bn":
      raise ValueError("config.init_from.architecture='vgg16_bn': Keras has no VGG16-BN; use a torchvision "
                       "vgg16_bn .pth (format 'torch') or architecture 'vgg16'")
    mean, std = CAFFE_MEAN_RGB, (1.0, 1.0, 1.0)
  elif format == "torch":
    mean, std = IMAGENET_MEAN, IMAGENET_STD
  else:
    raise ValueError(f"config.init_from.format={format!r}: choose 'keras_h5' or 'torch' (or 'auto' with a "
                     f"known extension)")
  if num_channels == 1:
    return (float(np.mean(mean)),), (float(np.mean(std)),)
  return tuple(mean), tuple(std)


def check_config(config) -> None:
  """Checks `config.init_from` (called by segjax.config.validate); the file itself is read only by `load_into`."""
  block = config.init_from
  if block.format not in FORMATS:
    raise ValueError(f"config.init_from.format={block.format!r}: choose one of {FORMATS}")
  if block.architecture not in ARCHITECTURES:
    raise ValueError(f"config.init_from.architecture={block.architecture!r}: choose one of {ARCHITECTURES}")
  if not isinstance(block.target, str) or not block.target:
    raise ValueError(f"config.init_from.target={block.target!r}: give 'auto' or a parameter path such as "
                     f"'backbone'")
  if block.path is None:
    return
  fmt = resolve_format(block.path, block.format)
  input_normalization(fmt, block.architecture)  # raises for Keras + vgg16_bn


# ---------------------------------------------------------------------------------------------- loading


def _flatten(tree: Mapping[str, Any], prefix: Path = ()) -> dict[Path, Any]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      out.update(_flatten(value, (*prefix, key)))
    else:
      out[(*prefix, key)] = value
  return out


def _unflatten(flat: dict[Path, Any]) -> dict[str, Any]:
  out: dict[str, Any] = {}
  for path, value in flat.items():
    node = out
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value
  return out


def model_architecture(backbone_params: Mapping[str, Any]) -> str | None:
  """"vgg16", "vgg16_bn", "resnet50/101/152" from a backbone's parameter names, or None."""
  if "layer1_0" in backbone_params:
    blocks = sum(1 for k in backbone_params if k.startswith("layer3_"))
    return f"resnet{weight_files.RESNET_DEPTHS.get(blocks, f'?({blocks} blocks in layer3)')}"
  if "conv1_1" in backbone_params:
    return "vgg16_bn" if "bn1_1" in backbone_params else "vgg16"
  return None


def find_target(params: Mapping[str, Any], target: str, model_name: str = "model") -> Path:
  """Path of the backbone subtree in `params`: `target` split on "/", or for "auto" the model itself when it is
  a bare backbone, else its `backbone` or `encoder` subtree."""
  if target == "auto":
    if model_architecture(params):
      return ()
    for name in _TARGETS:
      if name in params and model_architecture(params[name]):
        return (name,)
    raise ValueError(f"config.init_from.target='auto': {model_name} has no VGG16 or ResNet subtree named "
                     f"{_TARGETS} (its parameters: {sorted(params)}); set config.init_from.target to its "
                     f"backbone's parameter path, or use a model with a VGG16 / ResNet backbone")
  path, node = tuple(p for p in target.split("/") if p), params
  for i, key in enumerate(path):
    if not isinstance(node, Mapping) or key not in node:
      raise ValueError(f"config.init_from.target={target!r}: {model_name} has no parameter subtree "
                       f"{'/'.join(path[:i + 1])!r} (there: {sorted(node) if isinstance(node, Mapping) else []})")
    node = node[key]
  return path


def load_into(params: Mapping[str, Any], batch_stats: Mapping[str, Any], init_from, model) -> tuple[
    dict[str, Any], dict[str, Any], LoadReport]:
  """Loads the backbone weights of the file `init_from.path` over `params` and `batch_stats`.

  Leaves may be arrays or jax.ShapeDtypeStructs (only their shape and dtype are read); loaded leaves are
  replaced by numpy arrays of the leaf's dtype, the others are returned as they were.

  Args:
    params: the model's `params` collection.
    batch_stats: its `batch_stats` collection ({} without BatchNorm).
    init_from: `config.init_from` (path, format, architecture, target).
    model: the Flax module (its class name appears in errors; `stride_in_1x1` tells a Keras-style ResNet).

  Returns:
    (params, batch_stats, LoadReport).

  Raises:
    FileNotFoundError: no file at init_from.path.
    ValueError: the file's architecture is not the model's, or an array does not fit (naming the file, the key,
      both shapes and the fix).
  """
  path = init_from.path
  if not path or not os.path.isfile(path):
    raise FileNotFoundError(f"config.init_from.path={path!r}: no such file; download the weights (docs/weights.md) "
                            f"or set config.init_from.path=None to train from scratch")
  fmt = resolve_format(path, init_from.format)
  model_name = type(model).__name__
  target = find_target(params, init_from.target, model_name)
  where = "/".join(target) or "(root)"
  sub_params = params
  for key in target:
    sub_params = sub_params[key]
  sub_stats = batch_stats
  for key in target:
    sub_stats = sub_stats.get(key, {}) if isinstance(sub_stats, Mapping) else {}
  have = model_architecture(sub_params)
  if have is None:
    raise ValueError(f"config.init_from.target={init_from.target!r}: {model_name}'s params[{where!r}] has no VGG16 "
                     f"(conv1_1 ...) or ResNet (layer1_0 ...) layers; point init_from.target at the backbone")
  weights = weight_files.read_weights(path, fmt)
  wanted = init_from.architecture if init_from.architecture != "auto" else have
  fits = weights.architecture == wanted and (have == wanted or (wanted, have) == ("vgg16", "vgg16_bn"))
  if not fits:
    asked = f"config.init_from.architecture={wanted!r} and " if init_from.architecture != "auto" else ""
    raise ValueError(f"config.init_from.path={path!r} holds {weights.architecture} weights, but {asked}"
                     f"{model_name}'s params[{where!r}] is a {have} backbone: use a {have} weight file, or a model "
                     f"with a {weights.architecture} backbone")
  if weights.architecture.startswith("resnet"):
    caffe = bool(getattr(model, "stride_in_1x1", False))
    if caffe != weights.bgr:
      need = "True (ResNet v1, stride in the first 1x1 convolution)" if weights.bgr else "False (torchvision v1.5)"
      raise ValueError(f"config.init_from.path={path!r}: {fmt} ResNet weights need the model's stride_in_1x1={need};"
                       f" {model_name} has stride_in_1x1={getattr(model, 'stride_in_1x1', 'absent (False)')}. Set "
                       f"config.model.stride_in_1x1 accordingly, or use a {'torchvision' if weights.bgr else 'Keras'}"
                       f" file")

  flat = {"params": _flatten(sub_params), "batch_stats": _flatten(sub_stats)}
  first = weights.params.get(weights.first_conv)
  if first is not None:
    if weights.bgr:
      first = first[:, :, ::-1]  # BGR -> RGB input channels
    model_first = flat["params"].get(weights.first_conv)
    if model_first is not None and model_first.shape[2] == 1 and first.shape[2] == 3:
      first = first.sum(axis=2, keepdims=True)  # grayscale input (module docstring)
    weights.params[weights.first_conv] = np.ascontiguousarray(first)

  loaded, num_loaded = [], 0
  for collection in ("params", "batch_stats"):
    for key, value in getattr(weights, collection).items():
      file_key, file_shape = weights.sources[(collection, *key)]
      full = "/".join((*target, *key))
      leaf = flat[collection].get(key)
      if leaf is None:
        raise ValueError(f"{path}: {file_key} {file_shape} maps to {collection} {full!r}, which {model_name} does "
                         f"not have: the file's {weights.architecture} has layers the model's backbone lacks. Use a "
                         f"model with the full {weights.architecture} backbone (default stages/depth), or another file")
      if tuple(leaf.shape) != value.shape:
        raise ValueError(f"{path}: {file_key} has shape {file_shape} (as segjax lays it out: {value.shape}), but "
                         f"{model_name}'s {collection} {full!r} has shape {tuple(leaf.shape)}. Use weights of the "
                         f"model's widths (a pretrained file fits only the default stages/width/stem_width/stem, "
                         f"and 1 or 3 input channels), or set config.init_from.path=None")
      flat[collection][key] = value.astype(leaf.dtype)
      loaded.append(f"{collection}:{full}")
      num_loaded += value.size if collection == "params" else 0

  # fc6/fc7 beside the backbone, where the model has them with VGG16's shapes (module docstring).
  extras = {}
  beside = _flatten(params) if weights.extras else {}
  for key, value in weights.extras.items():
    full = (*target[:-1], *key)
    leaf = beside.get(full) if target else None  # a bare backbone has nothing beside it
    if leaf is not None and tuple(leaf.shape) == value.shape:
      extras[full] = value.astype(leaf.dtype)
      loaded.append(f"params:{'/'.join(full)}")
      num_loaded += value.size
    else:
      found = "absent" if leaf is None else f"of shape {tuple(leaf.shape)}"
      weights.ignored.append(f"{'/'.join(key)} {value.shape} (the model's {'/'.join(full)} is {found})")

  done = set(loaded)
  all_params = _flatten(params)
  left = [p for p in all_params if f"params:{'/'.join(p)}" not in done]
  report = LoadReport(path=str(path), format=fmt, architecture=weights.architecture, target=where,
                      loaded=tuple(loaded), left_at_init=tuple("/".join(p) for p in left),
                      ignored=tuple(weights.ignored), num_loaded=int(num_loaded),
                      num_left_at_init=int(sum(int(np.prod(all_params[p].shape)) for p in left)))

  def graft(tree, sub):
    if not target:
      return sub
    tree = _unflatten(_flatten(tree)) if tree else {}
    node = tree
    for key in target[:-1]:
      node = node.setdefault(key, {})
    node[target[-1]] = sub
    return tree

  new_params = graft(params, _unflatten(flat["params"]))
  if extras:
    new_params = _unflatten({**_flatten(new_params), **extras})
  new_stats = graft(batch_stats, _unflatten(flat["batch_stats"])) if flat["batch_stats"] else batch_stats
  return new_params, new_stats, report
