"""Host transforms of instance data: a stored example -> the fixed-shape fields of a training or eval batch.

The host decodes, resizes and pads; random augmentation runs on device (segjax.data.instance.augment). Every
example leaves here with the same shapes, so grain batches them and jit compiles once:

  image   uint8   [H, W, 3]   resized to fit (H, W) keeping its aspect ratio, padded bottom/right with zeros
  boxes   float32 [N, 4]      (x1, y1, x2, y2) in the resized image's pixels; zeros for padding rows
  classes int32   [N]         1..K, 0 for padding
  masks   uint8   [N, H, W]   0/1 full-image masks, resized and padded as the image
  valid   float32 [N]         1 for a stored annotation (crowd included), 0 for padding
  crowd   float32 [N]         1 for an iscrowd / ignore annotation

N = max_instances (`config.instance.max_instances`). A stored example with more instances is an error naming
it, its count and the key to raise: dropping instances silently would teach the model that they are background.
Images without objects become examples with every row padding: they train as negatives.

The resize follows torchvision's GeneralizedRCNNTransform: the image bilinearly with half-pixel centres and no
antialiasing (F.interpolate(..., mode="bilinear", align_corners=False)), boxes scaled by the per-axis size ratios
(`resize_boxes`); masks take the nearest source pixel with half-pixel centres (torchvision's "nearest" takes
floor(i * in / out), which shifts masks against the image by up to half a pixel).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping, Sequence

import grain
import numpy as np

from segjax.data.instance import features

MAX_INSTANCES_KEY = "config.instance.max_instances"


def fit_size(height: int, width: int, size: Sequence[int]) -> tuple[int, int]:
  """The (height, width) an image resized to fit inside `size` keeping its aspect ratio gets (>= 1 each)."""
  scale = min(size[0] / height, size[1] / width)
  return (min(size[0], max(1, int(height * scale + 0.5))), min(size[1], max(1, int(width * scale + 0.5))))


def _taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Bilinear source rows (lo, hi) and the weight of hi along one axis, half-pixel centres, edge clamped."""
  src = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
  lo = np.floor(src).astype(np.int64)
  return lo, np.minimum(lo + 1, n_in - 1), (src - lo).astype(np.float32)


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """uint8 [h, w, C] -> uint8 [height, width, C], bilinear with half-pixel centres (torch's align_corners=False)."""
  h, w = image.shape[:2]
  if (h, w) == (height, width):
    return image
  r0, r1, fr = _taps(h, height)
  c0, c1, fc = _taps(w, width)
  x = image.astype(np.float32)
  x = x[r0] * (1 - fr)[:, None, None] + x[r1] * fr[:, None, None]
  x = x[:, c0] * (1 - fc)[None, :, None] + x[:, c1] * fc[None, :, None]
  return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def resize_masks(masks: np.ndarray, height: int, width: int) -> np.ndarray:
  """[n, h, w] -> [n, height, width] by the nearest source pixel (half-pixel centres)."""
  h, w = masks.shape[1:]
  if (h, w) == (height, width):
    return masks
  rows = np.minimum(((np.arange(height) + 0.5) * h / height).astype(np.int64), h - 1)
  cols = np.minimum(((np.arange(width) + 0.5) * w / width).astype(np.int64), w - 1)
  return masks[:, rows][:, :, cols]


def check_count(count: int, max_instances: int, what: str) -> None:
  """Raises when an example holds more instances than the batch has rows.

  Args:
    count: the example's instances (crowd included).
    max_instances: N.
    what: the example, as the message names it ("example train_000017 (image id 17) of coco").
  """
  if count > max_instances:
    raise ValueError(f"{what} has {count} instances (crowd regions included), more than {MAX_INSTANCES_KEY}="
                     f"{max_instances}: raise --{MAX_INSTANCES_KEY} to at least {count} (the dataset's largest "
                     "count is in its spec, instance.get_spec(...).max_objects); instances are never dropped "
                     "silently, since the model would learn them as background.")


def check_max_instances(max_objects: Mapping[str, int], split: str, max_instances: int, name: str) -> None:
  """Raises before training when a split holds an example with more instances than max_instances.

  Args:
    max_objects: split -> largest instance count, `registry.get_spec(...).max_objects`.
    split: the split read, tfds slicing allowed ("train[:100]" is checked as "train", an upper bound).
    max_instances: N.
    name: the dataset, as the message names it.
  """
  for part in split.split("+"):
    base = re.sub(r"\[.*\]$", "", part.strip()).strip()
    count = int(max_objects.get(base, 0))
    if count > max_instances:
      raise ValueError(f"Split {base!r} of {name} holds an example with {count} instances (crowd regions "
                       f"included), more than {MAX_INSTANCES_KEY}={max_instances}: raise --{MAX_INSTANCES_KEY} to "
                       f"at least {count}; instances are never dropped silently, since the model would learn them "
                       "as background.")


def _what(inst: features.Instances, name: str) -> str:
  return f"Example {inst.filename} (image id {inst.image_id}) of {name}"


def to_fields(inst: features.Instances, size: Sequence[int], max_instances: int, name: str = "the dataset",
              ) -> dict[str, np.ndarray]:
  """The batch fields (module doc) of decoded instances: resized to fit `size`, padded to `size` and N rows.

  Returns:
    The training fields plus `image_size` int32 [2], the resized image's (height, width) before padding, and
    `scale` float32 [2], its (height, width) over the stored image's (boxes / (sx, sy, sx, sy) are in the stored
    image's pixels).

  Raises:
    ValueError: more instances than `max_instances` (see `check_count`).
  """
  n = len(inst.classes)
  check_count(n, max_instances, _what(inst, name))
  height, width = int(size[0]), int(size[1])
  h, w = inst.image.shape[:2]
  oh, ow = fit_size(h, w, size)
  image = np.zeros((height, width, 3), np.uint8)
  image[:oh, :ow] = resize_image(inst.image, oh, ow)
  masks = np.zeros((max_instances, height, width), np.uint8)
  masks[:n, :oh, :ow] = resize_masks(inst.masks, oh, ow)
  sy, sx = oh / h, ow / w
  boxes = np.zeros((max_instances, 4), np.float32)
  boxes[:n] = inst.boxes * np.array([sx, sy, sx, sy], np.float32)
  classes = np.zeros(max_instances, np.int32)
  classes[:n] = inst.classes
  valid = np.zeros(max_instances, np.float32)
  valid[:n] = 1.0
  crowd = np.zeros(max_instances, np.float32)
  crowd[:n] = inst.crowd
  return {"image": image, "boxes": boxes, "classes": classes, "masks": masks, "valid": valid, "crowd": crowd,
          "image_size": np.array([oh, ow], np.int32), "scale": np.array([sy, sx], np.float32)}


_TRAIN_KEYS = ("image", "boxes", "classes", "masks", "valid", "crowd")


class TrainTransform(grain.transforms.RandomMap):
  """A stored example -> the training fields (module doc), for `segjax.data.pipeline.train_dataset`.

  Deterministic (the randomness is on device); a RandomMap because `train_dataset` maps with `random_map`.

  Args:
    size: (height, width) of every training image, the crop size.
    max_instances: N, `config.instance.max_instances`.
    name: the dataset, as errors name it.
  """

  def __init__(self, size: Sequence[int], max_instances: int, name: str = "the dataset"):
    self.size = (int(size[0]), int(size[1]))
    self.max_instances = int(max_instances)
    self.name = name

  def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    del rng
    fields = to_fields(features.decode(element), self.size, self.max_instances, self.name)
    return {k: fields[k] for k in _TRAIN_KEYS}


def eval_example(size: Sequence[int], max_instances: int, name: str = "the dataset", *, fit: bool = False,
                 targets: bool = True) -> Callable[[dict[str, Any], int], dict[str, np.ndarray]]:
  """`segjax.data.pipeline.eval_batches`' example function of instance segmentation.

  Each example: the training fields (ground truth included, for evaluators that read it from the batch), plus
  `image_size` int32 [2] (the image's height, width before padding), `image_id` int64 (the stored image id) and
  `scale` float32 [2] (1, 1 unless `fit`).

  Args:
    size: (height, width) every eval image is padded to.
    max_instances: N.
    name: the dataset, as errors name it.
    fit: resize images to fit `size` (as training does); False pads only and a larger image is an error, so
      predictions are in the stored image's pixels (what COCO evaluation needs).
    targets: False leaves out the ground truth (boxes, classes, masks, valid, crowd): N full-size masks per
      example are large at COCO's sizes, and a COCO evaluator reads the ground truth from the JSON instead.

  Raises (when called):
    ValueError: an image larger than `size` without `fit`; more instances than max_instances.
  """
  height, width = int(size[0]), int(size[1])

  def example(raw: dict[str, Any], index: int) -> dict[str, np.ndarray]:
    del index
    inst = features.decode(raw)
    h, w = inst.image.shape[:2]
    if not fit and (h > height or w > width):
      raise ValueError(f"{_what(inst, name)} is {h}x{w}, larger than the eval size {height}x{width}: set "
                       f"--config.dataset.eval_size to at least ({h}, {w}) (rounded up to the model's stride), "
                       "or evaluate resized images (fit=True) and map predictions back by `scale`.")
    fields = to_fields(inst, (height, width) if fit else (h, w), max_instances, name)
    if not fit:  # pad, without resizing, to the eval size
      fields = _pad_fields(fields, height, width)
    if not targets:
      fields = {k: v for k, v in fields.items() if k not in _TRAIN_KEYS[1:]}
    return {**fields, "image_id": np.int64(inst.image_id)}
  return example


def _pad_fields(fields: dict[str, np.ndarray], height: int, width: int) -> dict[str, np.ndarray]:
  h, w = fields["image"].shape[:2]
  pad = ((0, height - h), (0, width - w))
  return {**fields, "image": np.pad(fields["image"], pad + ((0, 0),)),
          "masks": np.pad(fields["masks"], ((0, 0),) + pad)}


def eval_padding(size: Sequence[int], max_instances: int, *, targets: bool = True
                 ) -> Callable[[], dict[str, np.ndarray]]:
  """`eval_batches`' padding example: `eval_example`'s fields (the same `targets`), all zeros: no instance,
  image_size (0, 0), scale (1, 1), image_id -1."""
  height, width = int(size[0]), int(size[1])
  n = int(max_instances)

  def padding() -> dict[str, np.ndarray]:
    out = {"image": np.zeros((height, width, 3), np.uint8), "image_size": np.zeros(2, np.int32),
           "scale": np.ones(2, np.float32), "image_id": np.int64(-1)}
    if targets:
      out.update(boxes=np.zeros((n, 4), np.float32), classes=np.zeros(n, np.int32),
                 masks=np.zeros((n, height, width), np.uint8), valid=np.zeros(n, np.float32),
                 crowd=np.zeros(n, np.float32))
    return out
  return padding
