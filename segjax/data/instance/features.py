"""The stored example every instance builder writes, and reading it back as numpy arrays.

Every instance dataset (generated shapes, COCO-format, instance-id mask folders) stores

  image     uint8 [H, W, 3]    PNG (or the source's JPEG bytes)
  image_id  int64              the COCO image id; the example index for generated data
  filename  str                the source file stem ("train_000017" for generated data)
  objects   a tfds Sequence, one entry per annotated instance (none for an image without objects):
    mask      uint8 [H, W, 1]  0/1 full-image mask (PNG): the instance's visible pixels
    bbox      float32 [4]      (x1, y1, x2, y2) in pixels, continuous coordinates (torchvision's): an object
                               whose pixels span columns c0..c1 has x1 = c0, x2 = c1 + 1
    label     int64            class id 1..K (0 is background and never stored)
    is_crowd  bool             a COCO iscrowd / ignore region: never a training target

Full-image masks rather than RLE: tfds decodes them without pycocotools and without TensorFlow (its numpy
decoders), binary PNGs are a few hundred bytes each, and COCO's instances may overlap, so one id map per image
could not hold them. Each builder's DatasetInfo carries a MetadataDict (`class_names`, `max_objects` per split,
and for COCO `category_ids`), written once at preparation, so the registry knows a dataset's classes and its
largest instance count without reading every record.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np
import tensorflow_datasets as tfds

from segjax.data import png


def features(image_format: str = "png") -> tfds.features.FeaturesDict:
  """The stored example (see the module doc); `image_format` is "png" or "jpeg", the image bytes' encoding."""
  return tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=(None, None, 3), encoding_format=image_format),
      "image_id": tfds.features.Scalar(np.int64),
      "filename": tfds.features.Text(),
      "objects": tfds.features.Sequence({
          "mask": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
          "bbox": tfds.features.Tensor(shape=(4,), dtype=np.float32),
          "label": tfds.features.Scalar(np.int64),
          "is_crowd": tfds.features.Scalar(np.bool_),
      }),
  })


def info(builder: tfds.core.GeneratorBasedBuilder, *, description: str, image_format: str = "png",
         homepage: str | None = None, citation: str | None = None) -> tfds.core.DatasetInfo:
  """DatasetInfo of an instance builder: `features`, shuffling off (record i is the builder's i-th example, so
  an error or a prediction can be traced to its file), and an empty MetadataDict the builder fills while
  preparing (tfds saves it beside the records and restores it when the prepared copy is opened)."""
  return tfds.core.DatasetInfo(builder=builder, description=description, features=features(image_format),
                               homepage=homepage, citation=citation, disable_shuffling=True,
                               metadata=tfds.core.MetadataDict())


def mask_box(mask: np.ndarray) -> np.ndarray:
  """The tight (x1, y1, x2, y2) float32 box of a 2-D mask's nonzero pixels (all zeros for an empty mask)."""
  rows, cols = np.any(mask, axis=1), np.any(mask, axis=0)
  if not rows.any():
    return np.zeros(4, np.float32)
  r0, r1 = np.flatnonzero(rows)[[0, -1]]
  c0, c1 = np.flatnonzero(cols)[[0, -1]]
  return np.array([c0, r0, c1 + 1, r1 + 1], np.float32)


def encode_objects(masks: Sequence[np.ndarray], labels: Sequence[int], crowd: Sequence[bool],
                   boxes: Sequence[Sequence[float]] | None = None) -> dict[str, Any]:
  """The `objects` field of an example from per-instance 0/1 masks [H, W] (boxes default: the masks' tight boxes).

  Masks are PNG-encoded here (tfds would need TensorFlow to encode arrays) at the fastest level: binary masks
  are long runs, which every level compresses about equally.
  """
  n = len(masks)
  if boxes is None:
    boxes = [mask_box(m) for m in masks]
  return {
      "mask": [png.encode(np.asarray(m, np.uint8), compress_level=1) for m in masks],
      "bbox": np.asarray(boxes, np.float32).reshape(n, 4),
      "label": np.asarray(labels, np.int64).reshape(n),
      "is_crowd": np.asarray(crowd, np.bool_).reshape(n),
  }


@dataclasses.dataclass(frozen=True)
class Instances:
  """One decoded example as arrays (n instances, possibly 0).

  Attributes:
    image: uint8 [H, W, 3].
    boxes: float32 [n, 4] (x1, y1, x2, y2).
    classes: int32 [n], 1..K.
    masks: uint8 [n, H, W], 0/1.
    crowd: bool [n].
    image_id: the stored image id.
    filename: the source file stem.
  """
  image: np.ndarray
  boxes: np.ndarray
  classes: np.ndarray
  masks: np.ndarray
  crowd: np.ndarray
  image_id: int
  filename: str


def decode(raw: dict[str, Any]) -> Instances:
  """`Instances` of a record as tfds' data source returns it (objects as lists, a mask as [H, W, 1])."""
  image = np.asarray(raw["image"])
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  objects = raw.get("objects", {})
  masks = [np.asarray(m) for m in objects.get("mask", [])]
  n = len(masks)
  h, w = image.shape[:2]
  masks = (np.stack([m[..., 0] if m.ndim == 3 else m for m in masks]) if n else np.zeros((0, h, w), np.uint8))
  name = raw.get("filename", "?")
  return Instances(
      image=image,
      boxes=np.asarray(objects.get("bbox", []), np.float32).reshape(n, 4),
      classes=np.asarray(objects.get("label", []), np.int32).reshape(n),
      masks=(masks != 0).astype(np.uint8),
      crowd=np.asarray(objects.get("is_crowd", []), np.bool_).reshape(n),
      image_id=int(raw.get("image_id", -1)),
      filename=name.decode() if isinstance(name, bytes) else str(name))
