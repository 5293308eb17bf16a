"""The stored example every panoptic builder writes, and reading it back as numpy arrays.

Every panoptic dataset (generated panoptic_shapes, COCO panoptic, Cityscapes-style instance-id maps) stores COCO
panoptic's layout:

  image          uint8 [H, W, 3]  PNG (or the source's JPEG bytes)
  panoptic       uint8 [H, W, 3]  PNG segment-id map in COCO panoptic's colour encoding, id = R + 256 G + 256^2 B
                                  (`rgb2id` / `id2rgb`, as panopticapi.utils); 0 is void (unlabelled)
  segments_info  a tfds Sequence, one entry per segment of the map:
    id           int64            the segment's id in the map (>= 1)
    category_id  int64            the dataset's category id (COCO's sparse ids; see the metadata)
    isthing      bool             a countable object (its category's isthing)
    iscrowd      bool             a crowd region of a thing category: never a training target, ignored by PQ
    area         int64            the segment's pixel count
  image_id       int64            the source's image id (the example index for generated data)
  filename       str              the source file stem

Each builder's DatasetInfo carries a MetadataDict written once at preparation: `categories`, a list of
{"id", "name", "isthing"} in ascending id order, and `max_objects`, split -> the largest number of thing segments
(crowd included) in one image, so the registry knows the classes and the instance rows a batch needs without
reading every record.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds

from segjax.data import png

VOID = 0
MAX_ID = 256 ** 3 - 1  # the largest id the RGB encoding holds
_INFO_DTYPES = {"id": np.int64, "category_id": np.int64, "isthing": np.bool_, "iscrowd": np.bool_, "area": np.int64}
SEGMENT_KEYS = tuple(_INFO_DTYPES)


def rgb2id(rgb: np.ndarray) -> np.ndarray:
  """int32 [H, W] segment ids of a COCO panoptic PNG's uint8 [H, W, 3] colours (panopticapi.utils.rgb2id)."""
  rgb = np.asarray(rgb)
  if rgb.ndim != 3 or rgb.shape[-1] != 3:
    raise ValueError(f"a panoptic PNG is [H, W, 3] RGB, got shape {rgb.shape}")
  rgb = rgb.astype(np.int32)
  return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def id2rgb(ids: np.ndarray) -> np.ndarray:
  """uint8 [H, W, 3] colours of int [H, W] segment ids (panopticapi.utils.id2rgb); ids must lie in 0..256^3-1."""
  ids = np.asarray(ids, np.int64)
  if ids.size and (ids.min() < 0 or ids.max() > MAX_ID):
    raise ValueError(f"segment ids must lie in [0, {MAX_ID}], got [{ids.min()}, {ids.max()}]")
  return np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)


def features(image_format: str = "png") -> tfds.features.FeaturesDict:
  """The stored example (see the module doc); `image_format` is "png" or "jpeg", the image bytes' encoding."""
  return tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=(None, None, 3), encoding_format=image_format),
      "panoptic": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
      "segments_info": tfds.features.Sequence({
          "id": tfds.features.Scalar(np.int64),
          "category_id": tfds.features.Scalar(np.int64),
          "isthing": tfds.features.Scalar(np.bool_),
          "iscrowd": tfds.features.Scalar(np.bool_),
          "area": tfds.features.Scalar(np.int64),
      }),
      "image_id": tfds.features.Scalar(np.int64),
      "filename": tfds.features.Text(),
  })


def info(builder: tfds.core.GeneratorBasedBuilder, *, description: str, image_format: str = "png",
         homepage: str | None = None, citation: str | None = None) -> tfds.core.DatasetInfo:
  """DatasetInfo of a panoptic builder: `features`, shuffling off (record i is the builder's i-th example) and an
  empty MetadataDict the builder fills while preparing (`set_metadata`)."""
  return tfds.core.DatasetInfo(builder=builder, description=description, features=features(image_format),
                               homepage=homepage, citation=citation, disable_shuffling=True,
                               metadata=tfds.core.MetadataDict())


def set_metadata(builder: tfds.core.GeneratorBasedBuilder, categories: Sequence[Mapping[str, Any]],
                 max_objects: Mapping[str, int]) -> None:
  """Writes the metadata of the module doc into `builder.info` (call in `_split_generators`)."""
  cats = sorted(({"id": int(c["id"]), "name": str(c["name"]), "isthing": bool(c["isthing"])} for c in categories),
                key=lambda c: c["id"])
  ids = [c["id"] for c in cats]
  if len(set(ids)) != len(ids) or any(i <= 0 for i in ids):
    raise ValueError(f"category ids must be distinct and >= 1 (0 is void), got {ids}")
  builder.info.metadata.update(categories=cats, max_objects={k: int(v) for k, v in max_objects.items()})


def encode(image: bytes | np.ndarray, panoptic: np.ndarray, segments: Sequence[Mapping[str, Any]], image_id: int,
           filename: str) -> dict[str, Any]:
  """A stored example from the image (encoded bytes or a uint8 array), the int segment-id map [H, W] and its
  segments (dicts with SEGMENT_KEYS; `area` is recomputed from the map when absent)."""
  panoptic = np.asarray(panoptic)
  if not isinstance(image, bytes):
    image = png.encode(np.asarray(image, np.uint8), compress_level=1)
  segs = []
  for s in segments:
    s = dict(s)
    s.setdefault("area", int(np.count_nonzero(panoptic == s["id"])))
    segs.append(s)
  columns = {k: np.asarray([s[k] for s in segs], dtype).reshape(-1) for k, dtype in _INFO_DTYPES.items()}
  return {"image": image, "panoptic": png.encode(id2rgb(panoptic), compress_level=1), "segments_info": columns,
          "image_id": int(image_id), "filename": filename}


@dataclasses.dataclass(frozen=True)
class Panoptic:
  """One decoded example.

  Attributes:
    image: uint8 [H, W, 3].
    panoptic: int32 [H, W] segment ids, 0 void.
    segments: one dict per segment (SEGMENT_KEYS; python ints and bools), in stored order.
    image_id: the stored image id.
    filename: the source file stem.
  """
  image: np.ndarray
  panoptic: np.ndarray
  segments: list[dict[str, Any]]
  image_id: int
  filename: str

  @property
  def segments_by_id(self) -> dict[int, dict[str, Any]]:
    """{segment id: segment}, the form segjax.evaluation.panoptic_quality reads."""
    return {s["id"]: s for s in self.segments}


def decode(raw: Mapping[str, Any]) -> Panoptic:
  """`Panoptic` of a record as tfds' data source returns it (segments_info as lists or arrays)."""
  image = np.asarray(raw["image"])
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  info_ = raw.get("segments_info", {})
  columns = {k: np.asarray(info_.get(k, [])).reshape(-1) for k in SEGMENT_KEYS}
  segments = [{"id": int(columns["id"][i]), "category_id": int(columns["category_id"][i]),
               "isthing": bool(columns["isthing"][i]), "iscrowd": bool(columns["iscrowd"][i]),
               "area": int(columns["area"][i])} for i in range(len(columns["id"]))]
  name = raw.get("filename", "?")
  return Panoptic(image=image, panoptic=rgb2id(np.asarray(raw["panoptic"])), segments=segments,
                  image_id=int(raw.get("image_id", -1)),
                  filename=name.decode() if isinstance(name, bytes) else str(name))


def check_segments(panoptic: np.ndarray, segments: Sequence[Mapping[str, Any]], categories: Mapping[int, Any],
                   what: str) -> list[str]:
  """Problems of one example's map and segments, each naming `what` and the fix (empty when consistent):
  ids in the map without a segment, segments without pixels, duplicate ids, unknown categories, crowd stuff."""
  problems = []
  ids = [int(s["id"]) for s in segments]
  if len(set(ids)) != len(ids):
    problems.append(f"{what}: segment ids {sorted(i for i in set(ids) if ids.count(i) > 1)} are listed twice; "
                    "give every segment its own id")
  present = set(np.unique(panoptic).tolist()) - {VOID}
  unlisted = sorted(present - set(ids))
  if unlisted:
    problems.append(f"{what}: the map holds segment ids {unlisted[:10]} that segments_info does not list; list "
                    "them or set those pixels to 0 (void)")
  for s in segments:
    cid = int(s["category_id"])
    if cid not in categories:
      problems.append(f"{what}: segment {s['id']} has category_id {cid}, not among the categories "
                      f"{sorted(categories)[:20]}; add the category or fix the segment")
    if int(s["id"]) not in present:
      problems.append(f"{what}: segment {s['id']} (category {cid}) has no pixels in the map; remove it from "
                      "segments_info")
  return problems
