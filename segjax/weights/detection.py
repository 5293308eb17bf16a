"""torchvision Mask R-CNN / Faster R-CNN state dicts (`maskrcnn_resnet50_fpn`, `fasterrcnn_resnet50_fpn` and their
ResNet-101 forms) imported into segjax.models.detection.mask_rcnn.MaskRCNN's `params` and `batch_stats`.

Files are read without unpickling code (segjax.weights.files.read_torch: `.safetensors`, or torch.load with
weights_only=True). Names and layouts:
- backbone.body.*: the ResNet, mapped by segjax.weights.mapping (OIHW -> HWIO; BN / FrozenBatchNorm2d weight, bias
  -> params scale, bias; running_mean, running_var -> batch_stats mean, var);
- backbone.fpn.{inner,layer}_blocks.I[.0]: FPN convolutions; rpn.head.conv[.0.0], cls_logits, bbox_pred: RPN head
  (the bracketed `.0` / `.0.0` are torchvision >= 0.13's Conv2dNormActivation wrappers; the published COCO
  checkpoints predate them and both spellings are read);
- roi_heads.box_head.fc6 / fc7, box_predictor.cls_score / bbox_pred: Linear weights [out, in] -> Dense kernels
  [in, out]; fc6's 256 * 7 * 7 inputs are flattened channels-first by torchvision and channels-last here, so its
  rows are permuted from (c, y, x) to (y, x, c);
- roi_heads.mask_head.I.0 (or mask_fcnI+1): 3x3 convolutions; mask_predictor.conv5_mask: ConvTranspose2d
  [in, out, 2, 2] -> [2, 2, in, out]; mask_fcn_logits: 1x1 convolution.
Every array of the model must come from the file and every file array must go into the model, with equal shapes;
otherwise a ValueError names the key and what to change (num_classes, backbone, mask_head). The *_fpn_v2 models
(convolutional box head with GroupNorm) are a different architecture and are refused by name.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np
from flax import traverse_util

from segjax.weights.files import read_torch
from segjax.weights.mapping import _torch_resnet  # pylint: disable=protected-access  (the backbone's mapping)

Path = tuple[str, ...]


def _conv(value: np.ndarray) -> np.ndarray:
  return value.transpose(2, 3, 1, 0)  # OIHW -> HWIO


def _fc6(value: np.ndarray) -> np.ndarray:
  """[out, C * s * s] flattened (c, y, x) -> kernel [s * s * C, out] flattened (y, x, c)."""
  out, n = value.shape
  side = 7
  c = n // (side * side)
  if c * side * side != n:
    raise ValueError(f"roi_heads.box_head.fc6.weight has {n} inputs, not 7 * 7 * channels")
  return value.reshape(out, c, side, side).transpose(2, 3, 1, 0).reshape(side * side * c, out)


_LAYER = {"weight": "kernel", "bias": "bias"}
# (regex over the key without its last name, segjax module path, kernel converter)
_RULES: list[tuple[str, Any, Any]] = [
    (r"backbone\.fpn\.inner_blocks\.(\d)(?:\.0)?", lambda m: ("backbone", "fpn", f"inner_blocks_{m[1]}"), _conv),
    (r"backbone\.fpn\.layer_blocks\.(\d)(?:\.0)?", lambda m: ("backbone", "fpn", f"layer_blocks_{m[1]}"), _conv),
    (r"rpn\.head\.conv(?:\.0\.0)?", lambda m: ("rpn", "conv"), _conv),
    (r"rpn\.head\.(cls_logits|bbox_pred)", lambda m: ("rpn", m[1]), _conv),
    (r"roi_heads\.box_head\.fc6", lambda m: ("box_head", "fc6"), _fc6),
    (r"roi_heads\.box_head\.fc7", lambda m: ("box_head", "fc7"), np.transpose),
    (r"roi_heads\.box_predictor\.(cls_score|bbox_pred)", lambda m: ("box_predictor", m[1]), np.transpose),
    (r"roi_heads\.mask_head\.(\d)\.0", lambda m: ("mask_head", f"mask_fcn{int(m[1]) + 1}"), _conv),
    (r"roi_heads\.mask_head\.mask_fcn(\d)", lambda m: ("mask_head", f"mask_fcn{m[1]}"), _conv),
    (r"roi_heads\.mask_predictor\.conv5_mask", lambda m: ("mask_predictor", "conv5_mask"),
     lambda v: v.transpose(2, 3, 0, 1)),  # ConvTranspose2d [in, out, kh, kw] -> [kh, kw, in, out]
    (r"roi_heads\.mask_predictor\.mask_fcn_logits", lambda m: ("mask_predictor", "mask_fcn_logits"), _conv),
]


def from_torchvision(state: Mapping[str, np.ndarray]) -> tuple[dict[Path, np.ndarray], dict[Path, np.ndarray],
                                                                dict[Path, str], list[str]]:
  """A torchvision detection state dict in segjax's layout.

  Returns:
    (params, batch_stats, sources, unused): flat {path: array} for both collections (paths from the model's
    root), the file key each path came from, and the file keys that map to nothing.
  """
  # segjax.weights.files.read_torch strips a "backbone." prefix (meant for segmentation checkpoints): restore it.
  state = {(f"backbone.{k}" if k.startswith(("body.", "fpn.")) else k): np.asarray(v) for k, v in state.items()}
  params, batch_stats, sources, unused = {}, {}, {}, []
  body = {k[len("backbone.body."):]: v for k, v in state.items() if k.startswith("backbone.body.")}
  if body:
    resnet = _torch_resnet(body)
    for collection, out in (("params", params), ("batch_stats", batch_stats)):
      for path, value in getattr(resnet, collection).items():
        out[("backbone", "body", *path)] = value
        sources[(collection, "backbone", "body", *path)] = "backbone.body." + resnet.sources[(collection, *path)][0]
    unused += ["backbone.body." + k for k in resnet.ignored]
  for key, value in state.items():
    if key.startswith("backbone.body.") or key.endswith("num_batches_tracked"):
      continue
    module, _, name = key.rpartition(".")
    for pattern, path_of, convert in _RULES:
      m = re.fullmatch(pattern, module)
      if m and name in _LAYER:
        path = (*path_of(m), _LAYER[name])
        params[path] = np.asarray(convert(value) if name == "weight" else value, np.float32)
        sources[("params", *path)] = key
        break
    else:
      unused.append(key)
  return params, batch_stats, sources, unused


def _shape_hint(path: Path, got: dict[Path, np.ndarray]) -> str:
  """What to change in the model so that the file's array at `path` fits."""
  if path[0] in ("box_predictor", "mask_predictor"):
    classes = got.get(("box_predictor", "cls_score", "bias"))
    if classes is not None:
      return (f" The file has {classes.shape[0]} classes with background: set the model's num_classes (object "
              f"classes, background not counted) to {classes.shape[0] - 1}.")
    return " The number of classes differs: set num_classes to the file's (its cls_score has K + 1 rows)."
  if path[0] == "box_head":
    return " Set the model's representation_size (and fpn_channels) to the file's."
  return " Set the model's fpn_channels / backbone to the file's."


def load_torchvision_detection(source: str | Mapping[str, np.ndarray], params: Mapping[str, Any],
                               batch_stats: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
  """Every array of a MaskRCNN's `params` and `batch_stats` taken from a torchvision detection state dict.

  Args:
    source: a `.pth` / `.pt` / `.safetensors` file holding the state dict, or the state dict (name -> array).
    params, batch_stats: the model's initialised collections (their structure and shapes are checked).

  Returns:
    (params, batch_stats) as nested dicts of float32 numpy arrays.

  Raises:
    ValueError naming the key: a model array the file lacks (e.g. a Faster R-CNN file for a model with the mask
    head), a file array the model has no place for, or a shape that differs (e.g. num_classes).
  """
  where = source if isinstance(source, str) else "the state dict"
  state = read_torch(source) if isinstance(source, str) else source
  if any(re.match(r"roi_heads\.box_head\.\d", k) for k in state):
    raise ValueError(f"{where}: a maskrcnn/fasterrcnn_resnet50_fpn_v2 state dict (box head of convolutions + "
                     "GroupNorm, Li et al. 2021); segjax's MaskRCNN is the v1 model (two-MLP box head): use a "
                     "maskrcnn_resnet50_fpn / fasterrcnn_resnet50_fpn checkpoint")
  got_params, got_stats, sources, unused = from_torchvision(state)
  out = {}
  for collection, model_tree, got in (("params", params, got_params), ("batch_stats", batch_stats, got_stats)):
    model_tree = model_tree.unfreeze() if hasattr(model_tree, "unfreeze") else model_tree
    flat = traverse_util.flatten_dict(dict(model_tree))
    missing = sorted("/".join(p) for p in flat if p not in got)
    if missing:
      hint = (" The file has no mask head (a Faster R-CNN checkpoint): build the model with mask_head=False."
              if any(m.startswith("mask_") for m in missing) and not any(p[0].startswith("mask_") for p in got)
              else " Is it a torchvision maskrcnn/fasterrcnn *_fpn state dict for this backbone?")
      raise ValueError(f"{where}: no array for {collection} {missing[:5]}{' ...' if len(missing) > 5 else ''} "
                       f"({len(missing)} missing).{hint}")
    extra = sorted(p for p in got if p not in flat)
    if extra:
      keys = [sources[(collection, *p)] for p in extra]
      hint = (" The file has a mask head: build the model with mask_head=True (Mask R-CNN)."
              if any(p[0].startswith("mask_") for p in extra) else
              " The file's backbone is deeper than the model's: set backbone to the file's (resnet101?).")
      raise ValueError(f"{where}: keys {keys[:5]}{' ...' if len(keys) > 5 else ''} have no place in the model."
                       f"{hint}")
    for path, value in flat.items():
      if tuple(np.shape(value)) != got[path].shape:
        key = sources[(collection, *path)]
        raise ValueError(f"{where}: {key} (shape {state_shape(state, key)}; {got[path].shape} in segjax's layout) "
                         f"does not fit the model's {collection} {'/'.join(path)} of shape {tuple(np.shape(value))}."
                         f"{_shape_hint(path, got)}")
    out[collection] = traverse_util.unflatten_dict({p: got[p] for p in flat})
  leftover = [k for k in unused if not k.endswith("num_batches_tracked")]
  if leftover:
    raise ValueError(f"{where}: keys {leftover[:5]}{' ...' if len(leftover) > 5 else ''} are not part of a "
                     "torchvision Mask R-CNN / Faster R-CNN with an FPN (a different detector or a wrapped state "
                     "dict?)")
  return out["params"], out["batch_stats"]


def state_shape(state: Mapping[str, np.ndarray], key: str) -> tuple[int, ...]:
  """Shape of `key` in the state dict, also where read_torch stripped its "backbone." prefix."""
  value = state.get(key, state.get(key[len("backbone."):]) if key.startswith("backbone.") else None)
  return tuple(np.shape(value))
