"""COCO panoptic format as a tfds builder: an images folder, a panoptic JSON and a folder of segment-id PNGs per split.

  splits = {"train": (images_dir, "panoptic_train.json", panoptic_png_dir), ...}

or a manual_dir in COCO 2017's layout (train2017/, val2017/, annotations/panoptic_{train,val}2017.json and the
PNG folders annotations/panoptic_{train,val}2017/, as the panoptic annotations zip unpacks). Each annotation names
its image (image_id), its PNG (file_name; segment id = R + 256 G + 256^2 B, 0 void) and the PNG's segments
(segments_info). Every split is stored as segjax.data.panoptic.features' example: the image's own JPEG bytes (a
non-JPEG or EXIF-rotated image is re-encoded as PNG, as segjax.data.instance.coco), the PNG's ids, and segments_info
with isthing from the categories and `area` counted from the PNG (a JSON's areas may be stale after editing, and
PQ's void and crowd rules read areas). Examples are in ascending image id order.

The metadata's categories are the JSON's (id, name, isthing); max_objects per split is the largest number of thing
segments (crowd included) of one image. Every split must list the same categories, so ids mean the same everywhere.

Everything that would make a wrong example (a missing image or PNG, an annotation naming a missing image, an image
without an annotation, a PNG whose size differs from its image, ids in a PNG that segments_info does not list or
listed ids without pixels, an unknown category, crowd on a stuff category) is checked for every split, PNGs read,
before tfds writes anything; one error lists every problem (up to segjax.data.builder.MAX_LISTED), each naming
the file, the id, the value and the fix.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import pathlib
import re
from typing import Any, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from segjax.data import png
from segjax.data.builder import raise_problems
from segjax.data.panoptic import features

# PNG decoding releases the GIL, so a few threads read the maps of a large split (COCO: 118k PNGs) much faster.
_THREADS = min(16, os.cpu_count() or 1)
_COCO2017 = {"train": ("train2017", "annotations/panoptic_train2017.json", "annotations/panoptic_train2017"),
             "validation": ("val2017", "annotations/panoptic_val2017.json", "annotations/panoptic_val2017")}
_ROTATED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def image_size(path: pathlib.Path) -> tuple[int, int]:
  """(height, width) of an image as stored (EXIF orientation applied, as png.read_jpeg), from its header only.

  Raises:
    ValueError: the file is not an image PIL can read.
  """
  try:
    with Image.open(path) as img:
      rotated = png.orientation(img) in _ROTATED
      return (img.width, img.height) if rotated else (img.height, img.width)
  except (OSError, SyntaxError, ValueError) as e:
    raise ValueError(f"image {path} is not an image PIL can read ({type(e).__name__}: {e}): re-export it from the "
                     "original, or remove it") from None


def read_id_map(path: pathlib.Path) -> np.ndarray:
  """int32 [H, W] segment ids of a COCO panoptic PNG (RGB; id = R + 256 G + 256^2 B).

  Raises:
    ValueError: an unreadable file or one that is not RGB (a palette or grey PNG holds no COCO ids).
  """
  with png.open_image(path, what="panoptic PNG", fix="re-export it from the panoptic annotations") as img:
    if img.mode != "RGB":
      raise ValueError(f"panoptic PNG {path} is PIL mode {img.mode}, not RGB: COCO panoptic PNGs encode the segment "
                       "id as R + 256 G + 256^2 B (panopticapi.utils.id2rgb); re-export it as an RGB PNG")
    return features.rgb2id(np.asarray(img))


@dataclasses.dataclass(frozen=True)
class PanopticSplit:
  """One split's source (paths resolved): its images folder, panoptic JSON and folder of segment-id PNGs."""
  split: str
  images_dir: str
  panoptic_json: str
  panoptic_dir: str


@dataclasses.dataclass(frozen=True)
class _Image:
  """A checked image: its files and segments (SEGMENT_KEYS, area counted from the PNG), in segments_info order."""
  image_id: int
  file_name: str
  png_name: str
  segments: list[dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class _Parsed:
  source: PanopticSplit
  images: list[_Image]  # ascending image id
  categories: dict[int, dict[str, Any]]  # id -> {"id", "name", "isthing"}


def _load_json(path: pathlib.Path) -> dict[str, Any]:
  if not path.is_file():
    raise ValueError(f"COCO panoptic JSON {path} does not exist: pass the split's panoptic JSON (splits={{split: "
                     "(images_dir, panoptic_json, panoptic_dir)}).")
  try:
    data = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"COCO panoptic JSON {path} is not valid JSON ({e}): re-export it.") from None
  missing = [k for k in ("images", "annotations", "categories") if not isinstance(data.get(k), list)]
  if missing:
    raise ValueError(f"COCO panoptic JSON {path} has no {' / '.join(missing)} list: a panoptic JSON holds 'images', "
                     "'annotations' (with segments_info) and 'categories' (https://cocodataset.org/#format-data).")
  return data


def _categories(path: pathlib.Path, data: dict[str, Any], errors: list[str]) -> dict[int, dict[str, Any]]:
  cats = {}
  for k, c in enumerate(data["categories"]):
    if not isinstance(c, dict) or "id" not in c or "isthing" not in c:
      errors.append(f"{path}: categories[{k}] = {c!r} has no id or isthing: every panoptic category needs id, name "
                    "and isthing (1 for countable objects, 0 for stuff).")
      continue
    cid = int(c["id"])
    if cid <= 0:
      errors.append(f"{path}: category {c.get('name', cid)!r} has id {cid}; ids must be >= 1 (0 is void): renumber "
                    "it (and its segments).")
      continue
    cats[cid] = {"id": cid, "name": str(c.get("name", cid)), "isthing": bool(c["isthing"])}
  if not cats and not errors:
    errors.append(f"{path}: the categories list is empty: list the categories ({{'id': 1, 'name': ..., 'isthing': "
                  "1}}).")
  return cats


def _check_png(path: pathlib.Path, where: str, infos: list[dict[str, Any]], size: tuple[int, int] | None,
               image_path: pathlib.Path, categories: Mapping[int, dict[str, Any]]) -> tuple[list[str], list[dict]]:
  """Reads one annotation's PNG; returns its problems and its segments (area counted from the PNG)."""
  if not path.is_file():
    return [f"{where}: its PNG {path} does not exist: put it in {path.parent} (or pass that split's panoptic PNG "
            "folder), or delete the annotation and its image."], []
  try:
    ids = read_id_map(path)
  except ValueError as e:
    return [f"{where}: {e}."], []
  problems = []
  if size is not None and ids.shape != size:
    problems.append(f"{where}: its PNG {path} is {ids.shape[0]}x{ids.shape[1]} (height x width) but its image "
                    f"{image_path} is {size[0]}x{size[1]}: the map must cover the image pixel for pixel; re-export "
                    "the PNG at the image's size (or pair it with its own image).")
  problems += features.check_segments(ids, infos, categories, f"{where}, PNG {path}")
  segments = []
  present, counts = np.unique(ids, return_counts=True)
  areas = dict(zip(present.tolist(), counts.tolist()))
  for s in infos:
    cat = categories.get(int(s["category_id"]))
    if cat is None:
      continue  # reported by check_segments
    if bool(s.get("iscrowd", 0)) and not cat["isthing"]:
      problems.append(f"{where}: segment {s['id']} of stuff category {cat['id']} ({cat['name']}) has iscrowd 1; "
                      "crowd marks a group of things (PQ ignores it): set iscrowd to 0.")
    segments.append({"id": int(s["id"]), "category_id": cat["id"], "isthing": cat["isthing"],
                     "iscrowd": bool(s.get("iscrowd", 0)), "area": int(areas.get(int(s["id"]), 0))})
  return problems, segments


def parse_split(source: PanopticSplit, errors: list[str]) -> _Parsed:
  """Reads and checks one split's JSON and PNGs, appending every problem (naming file, id, value, fix) to `errors`."""
  path = pathlib.Path(source.panoptic_json)
  data = _load_json(path)
  categories = _categories(path, data, errors)
  images_dir, png_dir = pathlib.Path(source.images_dir), pathlib.Path(source.panoptic_dir)
  images: dict[int, tuple[str, tuple[int, int] | None]] = {}
  for k, img in enumerate(data["images"]):
    if not isinstance(img, dict) or "id" not in img or "file_name" not in img:
      errors.append(f"{path}: images[{k}] has no id or file_name: every image entry needs id and file_name (and "
                    "height, width).")
      continue
    iid, name = int(img["id"]), str(img["file_name"])
    if iid in images:
      errors.append(f"{path}: image id {iid} is listed twice ({images[iid][0]} and {name}): give each image its "
                    "own id.")
      continue
    file = images_dir / name
    size = None
    if not file.is_file():
      errors.append(f"{path}: image {iid}'s file {file} does not exist: put it in {images_dir} (or pass that split's "
                    "images folder), or delete the image and its annotation from the JSON.")
    else:
      try:
        size = image_size(file)
      except ValueError as e:
        errors.append(f"{path}: image {iid}: {e}.")
      if size is not None and "height" in img and "width" in img and size != (int(img["height"]), int(img["width"])):
        errors.append(f"{path}: image {iid} is {img['height']}x{img['width']} (height x width) in the JSON but its "
                      f"file {file} is {size[0]}x{size[1]} (EXIF orientation applied): fix the JSON's height/width "
                      "or the file.")
    images[iid] = (name, size)
  jobs, annotated = [], set()
  for k, ann in enumerate(data["annotations"]):
    iid = ann.get("image_id") if isinstance(ann, dict) else None
    if iid not in images:
      errors.append(f"{path}: annotations[{k}] names image id {iid}, which the file's images list does not hold: "
                    "add the image to 'images' or delete the annotation.")
      continue
    if iid in annotated:
      errors.append(f"{path}: image {iid} has two annotations: merge their segments_info into one (one PNG per "
                    "image).")
      continue
    annotated.add(iid)
    infos = ann.get("segments_info")
    if "file_name" not in ann or not isinstance(infos, list) or not all(
        isinstance(s, dict) and "id" in s and "category_id" in s for s in infos):
      errors.append(f"{path}: the annotation of image {iid} needs file_name (its PNG) and segments_info, a list of "
                    "{'id', 'category_id', 'iscrowd'}: fix the annotation (COCO's panoptic format).")
      continue
    name, size = images[iid]
    jobs.append((iid, png_dir / str(ann["file_name"]), f"{path}: image {iid} ({name})", infos, size,
                 images_dir / name))
  for iid in sorted(set(images) - annotated):
    errors.append(f"{path}: image {iid} ({images[iid][0]}) has no annotation: add its annotation (PNG and "
                  "segments_info) or delete the image from 'images'.")
  with concurrent.futures.ThreadPoolExecutor(_THREADS) as pool:
    results = list(pool.map(lambda j: _check_png(j[1], j[2], j[3], j[4], j[5], categories), jobs))
  checked = []
  for (iid, png_path, *_), (problems, segments) in zip(jobs, results):
    errors.extend(problems)
    checked.append(_Image(iid, images[iid][0], str(png_path), segments))
  return _Parsed(source=source, images=sorted(checked, key=lambda i: i.image_id), categories=categories)


def check_splits(sources: Sequence[PanopticSplit]) -> list[_Parsed]:
  """Parses and checks every split; one ValueError lists every problem (nothing is written before this)."""
  errors: list[str] = []
  parsed = [parse_split(s, errors) for s in sources]
  first = parsed[0]
  for p in parsed[1:]:
    if p.categories != first.categories:
      ours = sorted((c["id"], c["name"], c["isthing"]) for c in p.categories.values())
      theirs = sorted((c["id"], c["name"], c["isthing"]) for c in first.categories.values())
      errors.append(f"{p.source.panoptic_json} and {first.source.panoptic_json} list different categories "
                    f"({ours} vs {theirs}): every split must list the same categories (id, name, isthing), so ids "
                    "mean the same in all of them.")
  raise_problems(errors, "COCO panoptic data")
  return parsed


@dataclasses.dataclass(eq=False)
class CocoPanopticConfig(tfds.core.BuilderConfig):
  """A BuilderConfig carrying the splits' sources."""
  sources: tuple[PanopticSplit, ...] = ()


class SegjaxCocoPanoptic(tfds.core.GeneratorBasedBuilder):
  """COCO panoptic format data; build it with `make_builder`."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}

  def _sources(self) -> tuple[PanopticSplit, ...]:
    config = self.builder_config
    if not isinstance(config, CocoPanopticConfig) or not config.sources:
      raise ValueError("SegjaxCocoPanoptic needs a CocoPanopticConfig: build it with "
                       "segjax.data.panoptic.coco.make_builder(...).")
    return config.sources

  def _info(self) -> tfds.core.DatasetInfo:
    listed = ", ".join(f"{s.split}: {s.panoptic_json}" for s in self._sources())
    return features.info(self, image_format="jpeg", homepage="https://cocodataset.org/#panoptic-2020",
                         description=f"COCO panoptic format data ({listed}).")

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    parsed = check_splits(self._sources())
    max_objects = {p.source.split: max((sum(s["isthing"] for s in i.segments) for i in p.images), default=0)
                   for p in parsed}
    features.set_metadata(self, list(parsed[0].categories.values()), max_objects)
    return {p.source.split: self._generate_examples(p) for p in parsed}

  def _generate_examples(self, parsed: _Parsed):
    for img in parsed.images:
      path = pathlib.Path(parsed.source.images_dir) / img.file_name
      image, _ = png.read_jpeg(path)
      ids = read_id_map(pathlib.Path(img.png_name))
      yield img.image_id, features.encode(image, ids, img.segments, img.image_id,
                                          pathlib.PurePosixPath(img.file_name).stem)


def _sources(splits, manual_dir) -> tuple[PanopticSplit, ...]:
  if splits is None:
    if manual_dir is None:
      raise ValueError("The coco_panoptic dataset needs its files: pass splits={split: (images_dir, panoptic_json, "
                       "panoptic_dir)} or manual_dir=<folder with train2017/, val2017/, "
                       "annotations/panoptic_{train,val}2017.json and annotations/panoptic_{train,val}2017/>.")
    root = pathlib.Path(os.fspath(manual_dir)).expanduser()
    splits = {s: (root / d, root / j, root / p) for s, (d, j, p) in _COCO2017.items() if (root / j).is_file()}
    if not splits:
      raise ValueError(f"coco_panoptic manual_dir {root} holds neither annotations/panoptic_train2017.json nor "
                       "annotations/panoptic_val2017.json: extract COCO 2017's panoptic annotations zip there (and "
                       "the PNG zips inside it), or pass splits={split: (images_dir, panoptic_json, panoptic_dir)}.")
  out = []
  for split, paths in dict(splits).items():
    if len(tuple(paths)) != 3:
      raise ValueError(f"coco_panoptic split {split!r}: give (images_dir, panoptic_json, panoptic_dir), got "
                       f"{paths!r}.")
    images_dir, json_file, png_dir = (pathlib.Path(os.fspath(p)).expanduser().resolve() for p in paths)
    if not images_dir.is_dir():
      raise ValueError(f"coco_panoptic split {split!r}: images folder {images_dir} does not exist or is not a "
                       "folder: pass the folder holding the images the JSON's file_name entries name.")
    if not json_file.is_file():
      raise ValueError(f"coco_panoptic split {split!r}: panoptic JSON {json_file} does not exist: pass the split's "
                       "panoptic JSON.")
    if not png_dir.is_dir():
      raise ValueError(f"coco_panoptic split {split!r}: panoptic PNG folder {png_dir} does not exist or is not a "
                       "folder: pass the folder of segment-id PNGs the annotations' file_name entries name (COCO "
                       "ships it zipped inside the annotations zip: unzip it).")
    out.append(PanopticSplit(split, str(images_dir), str(json_file), str(png_dir)))
  if not out:
    raise ValueError("coco_panoptic: splits is empty: give at least one {split: (images_dir, panoptic_json, "
                     "panoptic_dir)}.")
  return tuple(out)


def make_builder(*, splits: Mapping[str, tuple[Any, Any, Any]] | None = None, manual_dir=None,
                 name: str = "coco_panoptic", data_dir=None) -> SegjaxCocoPanoptic:
  """A tfds builder (not yet prepared) of COCO panoptic format data; the checks run when it is prepared.

  Args:
    splits: {split: (images_dir, panoptic_json, panoptic_dir)}; default: COCO 2017's layout under manual_dir
      (train, validation).
    manual_dir: a folder in COCO 2017's layout, used when splits is None.
    name: first part of the tfds config name `<name>-<hash8>`; the hash covers the paths, the sizes and times of the
      JSON files and of every PNG, and the images folders' times, so edited annotations prepare afresh.
    data_dir: where prepared data lives; None: tfds' default.

  Raises:
    ValueError: a bad name, no splits, a missing images folder, JSON or PNG folder.
  """
  if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", name):
    raise ValueError(f"coco_panoptic dataset name {name!r}: use letters, digits, '_', '.' and '-' (it names a tfds "
                     "config).")
  sources = _sources(splits, manual_dir)
  stats = []
  for s in sources:
    st = os.stat(s.panoptic_json)
    stats.append((s.panoptic_json, st.st_size, st.st_mtime_ns, os.stat(s.images_dir).st_mtime_ns))
    # Every PNG's size and time (one scandir, well under a second for COCO's 118k): an edited map prepares afresh.
    with os.scandir(s.panoptic_dir) as entries:
      stats.append(sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in entries if e.is_file()))
  blob = json.dumps([str(SegjaxCocoPanoptic.VERSION), [dataclasses.astuple(s) for s in sources], stats])
  config = CocoPanopticConfig(name=f"{name}-{hashlib.sha256(blob.encode()).hexdigest()[:8]}", sources=sources,
                              description=f"segjax COCO panoptic format dataset {name!r}")
  return SegjaxCocoPanoptic(config=config, data_dir=os.fspath(data_dir) if data_dir else None,
                            file_format="array_record")
