"""Loading a pretrained file's backbone arrays over a model's `params` / `batch_stats` (segjax.weights documents
the conventions): the file's architecture must be the model's, every array's shape is checked, and what was not
loaded is reported."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

import numpy as np

from segjax.weights.files import read_weights
from segjax.weights.formats import resolve_format
from segjax.weights.mapping import FileWeights, resnet_architecture

# Subtrees of segjax models that hold a VGG16 or ResNet backbone (FCN, DeepLab, PSPNet, ContextNet: "backbone";
# SegNet, DeconvNet, U-Net-VGG16: "encoder").
_TARGETS = ("backbone", "encoder")

Path = tuple[str, ...]
# (entry of LoadReport.loaded, scalars of the params collection it loaded): what each loading step returns.
Loaded = list[tuple[str, int]]


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


# ---------------------------------------------------------------------------------------------- trees


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


def _subtree(tree: Mapping[str, Any], path: Path) -> Mapping[str, Any]:
  """`tree[path]`, or {} where the path is absent (batch_stats of a backbone without BatchNorm)."""
  for key in path:
    tree = tree.get(key, {}) if isinstance(tree, Mapping) else {}
  return tree


def _graft(tree: Mapping[str, Any], path: Path, sub: dict[str, Any]) -> dict[str, Any]:
  """A copy of `tree` with `sub` at `path` (`sub` itself for the root)."""
  if not path:
    return sub
  tree = _unflatten(_flatten(tree)) if tree else {}
  node = tree
  for key in path[:-1]:
    node = node.setdefault(key, {})
  node[path[-1]] = sub
  return tree


# ---------------------------------------------------------------------------------------------- the model's side


def model_architecture(backbone_params: Mapping[str, Any]) -> str | None:
  """"vgg16", "vgg16_bn", "resnet18/34/50/101/152" from a backbone's parameter names, or None."""
  if "layer1_0" in backbone_params:
    return resnet_architecture(sum(1 for k in backbone_params if k.startswith("layer3_")),
                               bottleneck="conv3" in backbone_params["layer1_0"])
  if "conv1_1" in backbone_params:
    return "vgg16_bn" if "bn1_1" in backbone_params else "vgg16"
  return None


def find_target(params: Mapping[str, Any], target: str, model_name: str = "model") -> Path:
  """Path of the backbone subtree in `params`: `target` split on "/", or for "auto" the model itself when it is
  a bare backbone, else its `backbone` or `encoder` subtree (or that subtree's `body`: Mask R-CNN's ResNet)."""
  if target == "auto":
    if model_architecture(params):
      return ()
    for name in _TARGETS:
      if name in params and model_architecture(params[name]):
        return (name,)
      # Detection models wrap the ResNet with its FPN (torchvision's backbone.body / backbone.fpn).
      if isinstance(params.get(name), Mapping) and model_architecture(params[name].get("body", {})):
        return (name, "body")
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


# ---------------------------------------------------------------------------------------------- checks


def _existing_file(path: str | None) -> str:
  if not path or not os.path.isfile(path):
    raise FileNotFoundError(f"config.init_from.path={path!r}: no such file; download the weights (docs/weights.md) "
                            f"or set config.init_from.path=None to train from scratch")
  return path


def _backbone_architecture(sub_params: Mapping[str, Any], init_from, model_name: str, where: str) -> str:
  have = model_architecture(sub_params)
  if have is None:
    raise ValueError(f"config.init_from.target={init_from.target!r}: {model_name}'s params[{where!r}] has no VGG16 "
                     f"(conv1_1 ...) or ResNet (layer1_0 ...) layers; point init_from.target at the backbone")
  return have


def _check_architecture(weights: FileWeights, init_from, have: str, model_name: str, where: str) -> None:
  """The file's architecture is the one asked for (or the model's), and a VGG16 file also fits a VGG16-BN."""
  wanted = init_from.architecture if init_from.architecture != "auto" else have
  if weights.architecture == wanted and (have == wanted or (wanted, have) == ("vgg16", "vgg16_bn")):
    return
  asked = f"config.init_from.architecture={wanted!r} and " if init_from.architecture != "auto" else ""
  raise ValueError(f"config.init_from.path={init_from.path!r} holds {weights.architecture} weights, but {asked}"
                   f"{model_name}'s params[{where!r}] is a {have} backbone: use a {have} weight file, or a model "
                   f"with a {weights.architecture} backbone")


def _check_resnet_style(weights: FileWeights, model, path: str, fmt: str) -> None:
  """Keras' (BGR, Caffe) ResNets are v1, with the stride in the first 1x1 convolution; torchvision's are v1.5."""
  if not weights.architecture.startswith("resnet"):
    return
  if bool(getattr(model, "stride_in_1x1", False)) == weights.bgr:
    return
  need = "True (ResNet v1, stride in the first 1x1 convolution)" if weights.bgr else "False (torchvision v1.5)"
  raise ValueError(f"config.init_from.path={path!r}: {fmt} ResNet weights need the model's stride_in_1x1={need};"
                   f" {type(model).__name__} has stride_in_1x1={getattr(model, 'stride_in_1x1', 'absent (False)')}. "
                   f"Set config.model.stride_in_1x1 accordingly, or use a {'torchvision' if weights.bgr else 'Keras'}"
                   f" file")


# ---------------------------------------------------------------------------------------------- loading


def _adapt_first_conv(weights: FileWeights, model_first) -> None:
  """The file's first kernel as the model takes its input: RGB (a BGR file's input channels flipped), and summed
  over the channels for a 1-channel model (segjax.weights docstring)."""
  first = weights.params.get(weights.first_conv)
  if first is None:
    return
  if weights.bgr:
    first = first[:, :, ::-1]  # BGR -> RGB input channels
  if model_first is not None and model_first.shape[2] == 1 and first.shape[2] == 3:
    first = first.sum(axis=2, keepdims=True)  # grayscale input
  weights.params[weights.first_conv] = np.ascontiguousarray(first)


def _fill_backbone(weights: FileWeights, flat: dict[str, dict[Path, Any]], target: Path, path: str,
                   model_name: str) -> Loaded:
  """Replaces the leaves of `flat` ({"params": ..., "batch_stats": ...} of the backbone) by the file's arrays,
  in the leaves' dtypes; raises where the model lacks a leaf or its shape differs."""
  loaded = []
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
      loaded.append((f"{collection}:{full}", value.size if collection == "params" else 0))
  return loaded


def _fill_extras(weights: FileWeights, params: Mapping[str, Any], target: Path) -> tuple[
    dict[Path, np.ndarray], Loaded]:
  """fc6/fc7 beside the backbone where the model has them with VGG16's shapes (segjax.weights docstring); the
  others are added to `weights.ignored`. Returns (model path -> array, what was loaded)."""
  extras, loaded = {}, []
  beside = _flatten(params) if weights.extras else {}
  for key, value in weights.extras.items():
    full = (*target[:-1], *key)
    leaf = beside.get(full) if target else None  # a bare backbone has nothing beside it
    if leaf is not None and tuple(leaf.shape) == value.shape:
      extras[full] = value.astype(leaf.dtype)
      loaded.append((f"params:{'/'.join(full)}", value.size))
    else:
      found = "absent" if leaf is None else f"of shape {tuple(leaf.shape)}"
      weights.ignored.append(f"{'/'.join(key)} {value.shape} (the model's {'/'.join(full)} is {found})")
  return extras, loaded


def _report(weights: FileWeights, params: Mapping[str, Any], loaded: Loaded, path: str, fmt: str,
            where: str) -> LoadReport:
  done = {name for name, _ in loaded}
  all_params = _flatten(params)
  left = [p for p in all_params if f"params:{'/'.join(p)}" not in done]
  return LoadReport(path=str(path), format=fmt, architecture=weights.architecture, target=where,
                    loaded=tuple(name for name, _ in loaded), left_at_init=tuple("/".join(p) for p in left),
                    ignored=tuple(weights.ignored), num_loaded=int(sum(n for _, n in loaded)),
                    num_left_at_init=int(sum(int(np.prod(all_params[p].shape)) for p in left)))


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
  path = _existing_file(init_from.path)
  fmt = resolve_format(path, init_from.format)
  model_name = type(model).__name__
  target = find_target(params, init_from.target, model_name)
  where = "/".join(target) or "(root)"
  flat = {"params": _flatten(_subtree(params, target)), "batch_stats": _flatten(_subtree(batch_stats, target))}
  have = _backbone_architecture(_subtree(params, target), init_from, model_name, where)
  weights = read_weights(path, fmt)
  _check_architecture(weights, init_from, have, model_name, where)
  _check_resnet_style(weights, model, path, fmt)

  _adapt_first_conv(weights, flat["params"].get(weights.first_conv))
  loaded = _fill_backbone(weights, flat, target, path, model_name)
  extras, loaded_extras = _fill_extras(weights, params, target)
  report = _report(weights, params, loaded + loaded_extras, path, fmt, where)

  new_params = _graft(params, target, _unflatten(flat["params"]))
  if extras:
    new_params = _unflatten({**_flatten(new_params), **extras})
  new_stats = _graft(batch_stats, target, _unflatten(flat["batch_stats"])) if flat["batch_stats"] else batch_stats
  return new_params, new_stats, report
