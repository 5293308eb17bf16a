"""Host transforms of panoptic data: a stored example -> the fixed-shape fields of a training or eval batch.

Panoptic FPN trains its two branches from one panoptic map:
- the instance heads (Mask R-CNN) on the thing segments, as instance data: segjax.data.instance.pipeline's fields
  (image, boxes, classes, masks, valid, crowd; N = config.instance.max_instances rows), classes numbered 1..K in
  ascending thing-category id (PanopticSpec.thing_ids); crowd thing segments are crowd rows, never targets;
- the semantic branch on `sem_seg` uint8 [H, W]: 0 for every thing pixel (crowd included: Detectron2's panoptic
  semantic targets map all things to one class), 1..S for the stuff categories in ascending id
  (PanopticSpec.stuff_ids), IGNORE (255) for void and for the padding around a resized image.

Resizing follows the instance pipeline (torchvision's GeneralizedRCNNTransform: the image bilinear, masks and the
semantic map at the nearest pixel, half-pixel centres). Evaluation batches carry the image and where it came from
(image_size, scale, image_id, example_index); the ground truth is read from the stored record on the host, at its
own resolution, as the COCO panoptic evaluation scores it.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import grain
import numpy as np

from segjax.data.instance import features as inst_features
from segjax.data.instance import pipeline as inst_pipeline
from segjax.data.panoptic import features
from segjax.data.panoptic.registry import IGNORE, PanopticSpec


def _lookup(ids: Sequence[int]) -> dict[int, int]:
  return {int(c): i + 1 for i, c in enumerate(ids)}


def to_instances(example: features.Panoptic, spec: PanopticSpec) -> inst_features.Instances:
  """The thing segments of an example as instance data (classes 1..K by spec.thing_ids), in stored order."""
  things = _lookup(spec.thing_ids)
  segs = [s for s in example.segments if s["category_id"] in things]
  h, w = example.panoptic.shape
  masks = (np.stack([example.panoptic == s["id"] for s in segs]).astype(np.uint8) if segs
           else np.zeros((0, h, w), np.uint8))
  return inst_features.Instances(
      image=example.image, boxes=np.asarray([inst_features.mask_box(m) for m in masks], np.float32).reshape(-1, 4),
      classes=np.asarray([things[s["category_id"]] for s in segs], np.int32),
      masks=masks, crowd=np.asarray([s["iscrowd"] for s in segs], np.bool_),
      image_id=example.image_id, filename=example.filename)


def semantic_target(example: features.Panoptic, spec: PanopticSpec) -> np.ndarray:
  """uint8 [H, W] semantic labels of an example (module doc): 0 things, 1..S stuff, IGNORE void."""
  stuff = _lookup(spec.stuff_ids)
  things = set(spec.thing_ids)
  lut_ids = [0] + [s["id"] for s in example.segments]
  lut_values = [IGNORE] + [0 if s["category_id"] in things else stuff.get(s["category_id"], IGNORE)
                           for s in example.segments]
  order = np.argsort(lut_ids)
  ids_sorted = np.asarray(lut_ids, np.int64)[order]
  values_sorted = np.asarray(lut_values, np.uint8)[order]
  pos = np.clip(np.searchsorted(ids_sorted, example.panoptic), 0, len(ids_sorted) - 1)
  found = ids_sorted[pos] == example.panoptic
  return np.where(found, values_sorted[pos], IGNORE).astype(np.uint8)


def to_fields(example: features.Panoptic, spec: PanopticSpec, size: Sequence[int], max_instances: int,
              ) -> dict[str, np.ndarray]:
  """The instance fields (segjax.data.instance.pipeline.to_fields) plus `sem_seg`, resized and padded alike."""
  inst = to_instances(example, spec)
  fields = inst_pipeline.to_fields(inst, size, max_instances, spec.name)
  oh, ow = (int(v) for v in fields["image_size"])
  sem = np.full((int(size[0]), int(size[1])), IGNORE, np.uint8)
  sem[:oh, :ow] = inst_pipeline.resize_masks(semantic_target(example, spec)[None], oh, ow)[0]
  return {**fields, "sem_seg": sem}


TRAIN_KEYS = ("image", "boxes", "classes", "masks", "valid", "crowd", "sem_seg")


class TrainTransform(grain.transforms.RandomMap):
  """A stored panoptic example -> the training fields (module doc); deterministic (augmentation is on device).

  Args:
    spec: the dataset's PanopticSpec (its category numbering).
    size: (height, width) of every training image.
    max_instances: N, config.instance.max_instances.
  """

  def __init__(self, spec: PanopticSpec, size: Sequence[int], max_instances: int):
    self.spec = spec
    self.size = (int(size[0]), int(size[1]))
    self.max_instances = int(max_instances)

  def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    del rng
    fields = to_fields(features.decode(element), self.spec, self.size, self.max_instances)
    return {k: fields[k] for k in TRAIN_KEYS}


def eval_functions(spec: PanopticSpec, size: Sequence[int], *, fit: bool
                   ) -> tuple[Callable[[dict[str, Any], int], dict[str, np.ndarray]], Callable[[], dict]]:
  """(example, padding) of `pipeline.eval_batches`: image uint8 [H, W, 3] (resized to fit `size` when `fit`, else
  padded only), image_size int32 [2], scale float32 [2], image_id int64, example_index int64 (-1: padding).

  Raises (when called):
    ValueError: an image larger than `size` without `fit`, naming it and the key to change.
  """
  height, width = int(size[0]), int(size[1])

  def example(raw: dict[str, Any], index: int) -> dict[str, np.ndarray]:
    ex = features.decode(raw)
    h, w = ex.image.shape[:2]
    if not fit and (h > height or w > width):
      raise ValueError(f"Example {ex.filename} (image id {ex.image_id}) of {spec.name} is {h}x{w}, larger than the "
                       f"eval size {height}x{width}: set --config.dataset.eval_size to at least ({h}, {w}) (rounded up "
                       "to a multiple of 32), or --config.instance.eval_resize=True.")
    oh, ow = inst_pipeline.fit_size(h, w, size) if fit else (h, w)
    image = np.zeros((height, width, 3), np.uint8)
    image[:oh, :ow] = inst_pipeline.resize_image(ex.image, oh, ow)
    return {"image": image, "image_size": np.array([oh, ow], np.int32),
            "scale": np.array([oh / h, ow / w], np.float32), "image_id": np.int64(ex.image_id),
            "example_index": np.int64(index)}

  def padding() -> dict[str, np.ndarray]:
    return {"image": np.zeros((height, width, 3), np.uint8), "image_size": np.zeros(2, np.int32),
            "scale": np.ones(2, np.float32), "image_id": np.int64(-1), "example_index": np.int64(-1)}
  return example, padding
