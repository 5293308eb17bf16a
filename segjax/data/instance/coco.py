"""COCO-format instance data as a tfds builder: an images folder and an instances JSON per split.

  splits = {"train": (images_dir, "instances_train.json"), "validation": (images_dir, "instances_val.json")}

or a manual_dir in COCO 2017's layout (train2017/, val2017/, annotations/instances_{train,val}2017.json).
Segmentations may be polygons, uncompressed RLE (COCO's crowd regions) or compressed RLE; they are decoded with
pycocotools exactly as `COCO.annToMask` does. `iscrowd` annotations are stored with is_crowd (an ignore region,
never a training target). Boxes are COCO's [x, y, w, h] as (x, y, x + w, y + h) clipped to the image, as
torchvision's references/detection/coco_utils.py (ConvertCocoPolysToMask). Every image is stored, also those
without annotations: they train as negatives (torchvision's reference drops them; issue 22 keeps them).

Categories become contiguous class ids 1..K in ascending category id order (COCO's 80 ids run 1..90 with gaps);
the builder's metadata keeps `category_ids` (class c is category category_ids[c]) to write results in COCO's ids.
Every split must list the same categories.

Everything the issue lists as bad input (a polygon with fewer than 3 points, an annotation naming a missing
image, an image file that does not exist, a box outside its image, a mask without pixels, an unknown category)
is checked for every split before tfds writes anything; one error lists every problem (up to
segjax.data.builder.MAX_LISTED), each naming the JSON file, the annotation id and the fix.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import re
from typing import Any, Mapping

import numpy as np
import pycocotools.mask as mask_utils
import tensorflow_datasets as tfds

from segjax.data import png
from segjax.data.builder import raise_problems
from segjax.data.instance import features

BOX_TOLERANCE = 1.0  # pixels a box may reach past the image edge (rounding in exported boxes)
_COCO2017 = {"train": ("train2017", "annotations/instances_train2017.json"),
             "validation": ("val2017", "annotations/instances_val2017.json")}


@dataclasses.dataclass(frozen=True)
class CocoSplit:
  """One split's source: where its images are and its instances JSON (paths resolved)."""
  split: str
  images_dir: str
  annotations: str


@dataclasses.dataclass(frozen=True)
class _Parsed:
  """A checked split: images sorted by id as (id, file_name, height, width), annotations per image id."""
  source: CocoSplit
  images: list[tuple[int, str, int, int]]
  annotations: dict[int, list[dict[str, Any]]]
  categories: dict[int, str]


def ann_to_rle(segmentation, height: int, width: int):
  """The RLE of a COCO segmentation (polygons, uncompressed or compressed RLE), as `COCO.annToRLE`."""
  if isinstance(segmentation, list):
    return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
  if isinstance(segmentation.get("counts"), list):
    return mask_utils.frPyObjects(segmentation, height, width)
  return segmentation


def ann_to_mask(segmentation, height: int, width: int) -> np.ndarray:
  """uint8 [height, width] 0/1 mask of a COCO segmentation, as `COCO.annToMask`."""
  return mask_utils.decode(ann_to_rle(segmentation, height, width))


def _segmentation_problem(seg, height: int, width: int) -> str | None:
  """Why a segmentation cannot be decoded (None if it can), checked before pycocotools sees it: its polygon
  reader takes a 4-number polygon for a box and an odd count silently drops a coordinate."""
  if isinstance(seg, list):
    if not seg:
      return "has an empty polygon list: delete the annotation or draw its outline"
    for k, poly in enumerate(seg):
      if not isinstance(poly, list) or not all(isinstance(v, (int, float)) for v in poly):
        return f"has polygon {k} that is not a list of numbers: write it as [x1, y1, x2, y2, ...]"
      if len(poly) % 2:
        return f"has polygon {k} with an odd number of coordinates ({len(poly)}): give (x, y) pairs"
      if len(poly) < 6:
        return (f"has polygon {k} with {len(poly) // 2} points; a polygon needs at least 3 (x, y) points: fix the "
                "polygon or delete it (or the annotation)")
    return None
  if isinstance(seg, dict) and "counts" in seg and "size" in seg:
    if list(seg["size"]) != [height, width]:
      return (f"has an RLE of size {list(seg['size'])} but its image is {height}x{width} (size is [height, "
              "width]): re-encode the mask at the image's size")
    return None
  return ("has no usable segmentation (neither polygons nor an RLE dict with counts and size); Mask R-CNN trains "
          "on masks: add one or delete the annotation")


def _load_json(path: pathlib.Path) -> dict[str, Any]:
  if not path.is_file():
    raise ValueError(f"COCO annotations {path} does not exist: pass the instances JSON of the split (splits="
                     "{split: (images_dir, annotations_json)}).")
  try:
    data = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"COCO annotations {path} is not valid JSON ({e}): re-export it.") from None
  missing = [k for k in ("images", "annotations", "categories") if not isinstance(data.get(k), list)]
  if missing:
    raise ValueError(f"COCO annotations {path} has no {' / '.join(missing)} list: an instances JSON holds "
                     "'images', 'annotations' and 'categories' (COCO's format, https://cocodataset.org/#format-data).")
  return data


def parse_split(source: CocoSplit, errors: list[str]) -> _Parsed:
  """Reads and checks one split's JSON, appending every problem (naming file, annotation and fix) to `errors`."""
  path = pathlib.Path(source.annotations)
  data = _load_json(path)
  categories = {int(c["id"]): str(c.get("name", c["id"])) for c in data["categories"]}
  if not categories:
    errors.append(f"{path}: the categories list is empty: list the object categories ({{'id': 1, 'name': ...}}).")
  images: dict[int, tuple[str, int, int]] = {}
  images_dir = pathlib.Path(source.images_dir)
  for k, img in enumerate(data["images"]):
    missing = [key for key in ("id", "file_name", "height", "width") if key not in img]
    if missing:
      errors.append(f"{path}: images[{k}] ({img.get('file_name', img.get('id', '?'))}) has no {', '.join(missing)}: "
                    "every image entry needs id, file_name, height and width (COCO's format).")
      continue
    iid, name = int(img["id"]), str(img["file_name"])
    if not (images_dir / name).is_file():
      errors.append(f"{path}: image {iid}'s file {images_dir / name} does not exist: put it in {images_dir} (or "
                    "pass that split's images folder), or delete the image and its annotations from the JSON.")
    images[iid] = (name, int(img["height"]), int(img["width"]))
  per_image: dict[int, list[dict[str, Any]]] = {iid: [] for iid in images}
  for ann in data["annotations"]:
    aid, iid = ann.get("id", "?"), ann.get("image_id")
    where = f"{path}: annotation {aid} (image {iid})"
    if iid not in images:
      errors.append(f"{path}: annotation {aid} names image id {iid}, which the file's images list does not hold: "
                    "add the image to 'images' or delete the annotation.")
      continue
    _, height, width = images[iid]
    if ann.get("category_id") not in categories:
      errors.append(f"{where} has category_id {ann.get('category_id')}, which the categories list does not hold "
                    f"(ids {sorted(categories)}): fix the annotation's category_id or add the category.")
      continue
    problem = _segmentation_problem(ann.get("segmentation"), height, width)
    if problem:
      errors.append(f"{where} {problem}.")
      continue
    if "bbox" in ann:
      x, y, w, h = (float(v) for v in ann["bbox"])
      t = BOX_TOLERANCE
      if x < -t or y < -t or x + w > width + t or y + h > height + t or w < 0 or h < 0:
        errors.append(f"{where} has bbox [x, y, w, h] = {ann['bbox']} outside its {width}x{height} image: fix the "
                      "box (0 <= x, 0 <= y, x + w <= width, y + h <= height) or the image's width and height.")
        continue
    if mask_utils.area(ann_to_rle(ann["segmentation"], height, width)) == 0:
      errors.append(f"{where} has a mask without pixels (a degenerate polygon or an empty RLE): redraw its "
                    "segmentation or delete the annotation.")
      continue
    per_image[iid].append(ann)
  return _Parsed(source=source, images=sorted((iid, *v) for iid, v in images.items()), annotations=per_image,
                 categories=categories)


def check_splits(sources: tuple[CocoSplit, ...]) -> list[_Parsed]:
  """Parses and checks every split; one ValueError lists every problem (nothing is written before this)."""
  errors: list[str] = []
  parsed = [parse_split(s, errors) for s in sources]
  first = parsed[0]
  for p in parsed[1:]:
    if p.categories != first.categories:
      errors.append(f"{p.source.annotations} and {first.source.annotations} list different categories "
                    f"({sorted(p.categories.items())} vs {sorted(first.categories.items())}): every split must "
                    "list the same categories, so class ids mean the same in all of them.")
  raise_problems(errors, "COCO data")
  return parsed


@dataclasses.dataclass(eq=False)
class CocoConfig(tfds.core.BuilderConfig):
  """A BuilderConfig carrying the splits' sources."""
  sources: tuple[CocoSplit, ...] = ()


class SegjaxCoco(tfds.core.GeneratorBasedBuilder):
  """COCO-format instance data; build it with `make_builder`."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}

  def _sources(self) -> tuple[CocoSplit, ...]:
    config = self.builder_config
    if not isinstance(config, CocoConfig) or not config.sources:
      raise ValueError("SegjaxCoco needs a CocoConfig: build it with segjax.data.instance.coco.make_builder(...).")
    return config.sources

  def _info(self) -> tfds.core.DatasetInfo:
    listed = ", ".join(f"{s.split}: {s.annotations}" for s in self._sources())
    return features.info(self, image_format="jpeg", homepage="https://cocodataset.org",
                         description=f"COCO-format instance segmentation ({listed}).")

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    parsed = check_splits(self._sources())
    ids = sorted(parsed[0].categories)
    contiguous = {cid: c for c, cid in enumerate(ids, 1)}
    self.info.metadata.update(
        class_names=["background", *(parsed[0].categories[i] for i in ids)], category_ids=[0, *ids],
        max_objects={p.source.split: max((len(a) for a in p.annotations.values()), default=0) for p in parsed})
    return {p.source.split: self._generate_examples(p, contiguous) for p in parsed}

  def _generate_examples(self, parsed: _Parsed, contiguous: Mapping[int, int]):
    for iid, name, height, width in parsed.images:
      path = pathlib.Path(parsed.source.images_dir) / name
      image, shape = png.read_jpeg(path)
      if tuple(shape) != (height, width):
        raise ValueError(f"{parsed.source.annotations}: image {iid} is {height}x{width} (height x width) in the "
                         f"JSON but its file {path} is {shape[0]}x{shape[1]} (EXIF orientation applied): fix the "
                         "JSON's width/height or the file. (Nothing was prepared.)")
      anns = parsed.annotations[iid]
      masks = [ann_to_mask(a["segmentation"], height, width) for a in anns]
      boxes = [_box(a, m, height, width) for a, m in zip(anns, masks)]
      yield iid, {
          "image": image, "image_id": iid, "filename": pathlib.PurePosixPath(name).stem,
          "objects": features.encode_objects(masks, [contiguous[a["category_id"]] for a in anns],
                                             [bool(a.get("iscrowd", 0)) for a in anns], boxes),
      }


def _box(ann: dict[str, Any], mask: np.ndarray, height: int, width: int) -> np.ndarray:
  """COCO's [x, y, w, h] as (x1, y1, x2, y2) clipped to the image; the mask's tight box when the annotation has
  no bbox or a degenerate one (zero width or height: torchvision's reference drops those, but the mask has
  pixels, checked, and a zero-size box target would make the box regression's log(w) infinite)."""
  if "bbox" not in ann:
    return features.mask_box(mask)
  x, y, w, h = (float(v) for v in ann["bbox"])
  box = np.clip(np.array([x, y, x + w, y + h], np.float32), 0, [width, height, width, height]).astype(np.float32)
  return box if box[2] > box[0] and box[3] > box[1] else features.mask_box(mask)


def _sources(splits, manual_dir) -> tuple[CocoSplit, ...]:
  if splits is None:
    if manual_dir is None:
      raise ValueError("The coco dataset needs its files: pass splits={split: (images_dir, instances_json)} or "
                       "manual_dir=<folder with train2017/, val2017/ and annotations/instances_{train,val}2017.json>.")
    root = pathlib.Path(os.fspath(manual_dir)).expanduser()
    splits = {s: (root / d, root / a) for s, (d, a) in _COCO2017.items() if (root / a).is_file()}
    if not splits:
      raise ValueError(f"coco manual_dir {root} holds neither annotations/instances_train2017.json nor "
                       "annotations/instances_val2017.json: extract COCO 2017's annotations zip there, or pass "
                       "splits={split: (images_dir, instances_json)}.")
  out = []
  for split, (images_dir, ann_file) in dict(splits).items():
    images = pathlib.Path(os.fspath(images_dir)).expanduser().resolve()
    if not images.is_dir():
      raise ValueError(f"coco split {split!r}: images folder {images} does not exist or is not a folder: pass the "
                       "folder holding the images the JSON's file_name entries name.")
    out.append(CocoSplit(split, str(images), str(pathlib.Path(os.fspath(ann_file)).expanduser().resolve())))
  if not out:
    raise ValueError("coco: splits is empty: give at least one {split: (images_dir, instances_json)}.")
  return tuple(out)


def make_builder(*, splits: Mapping[str, tuple[Any, Any]] | None = None, manual_dir=None, name: str = "coco",
                 data_dir=None) -> SegjaxCoco:
  """A tfds builder (not yet prepared) of COCO-format data; the checks run when it is prepared.

  Args:
    splits: {split: (images_dir, instances_json)}; default: COCO 2017's layout under manual_dir (train, validation).
    manual_dir: a folder in COCO 2017's layout, used when splits is None.
    name: first part of the tfds config name `<name>-<hash8>`; the hash covers the paths and the JSON files'
      sizes and times, so edited annotations prepare afresh.
    data_dir: where prepared data lives; None: tfds' default.

  Raises:
    ValueError: no splits, a missing images folder or annotations file.
  """
  if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", name):
    raise ValueError(f"coco dataset name {name!r}: use letters, digits, '_', '.' and '-' (it names a tfds config).")
  sources = _sources(splits, manual_dir)
  stats = []
  for s in sources:
    p = pathlib.Path(s.annotations)
    if not p.is_file():
      raise ValueError(f"coco split {s.split!r}: annotations file {p} does not exist: pass the split's instances "
                       "JSON.")
    stats.append((s.annotations, p.stat().st_size, p.stat().st_mtime_ns))
  blob = json.dumps([str(SegjaxCoco.VERSION), [dataclasses.astuple(s) for s in sources], stats])
  config = CocoConfig(name=f"{name}-{hashlib.sha256(blob.encode()).hexdigest()[:8]}", sources=sources,
                      description=f"segjax COCO-format dataset {name!r}")
  return SegjaxCoco(config=config, data_dir=os.fspath(data_dir) if data_dir else None, file_format="array_record")
