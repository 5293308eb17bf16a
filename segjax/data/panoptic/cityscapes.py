"""Cityscapes-style instance-id maps as a panoptic tfds builder (gtFine's *_instanceIds.png beside leftImg8bit).

  manual_dir/leftImg8bit/{train,val}/<city>/<stem>_leftImg8bit.png
  manual_dir/gtFine/{train,val}/<city>/<stem>_gtFine_instanceIds.png      ("train" and "validation" splits)

or splits = {split: (images_dir, instance_ids_dir)}, both searched recursively and paired by stem (the file name
before "_leftImg8bit.png", and before "_<gtSomething>_instanceIds.png" or "_instanceIds.png").

An instance-id map (16-bit PNG as Cityscapes ships it; 8- and 32-bit read the same) holds per pixel a value v:
v < 1000 is a label id with no instance (a stuff region, or a thing class's group / crowd region), v >= 1000 is
instance v % 1000 of thing label v // 1000. The conversion is cityscapesscripts' createPanopticImgs.py (with label
ids as category ids): every distinct value v is one segment with id v and category id the label's id; a v < 1000
of a label with instances is a crowd segment; labels that are ignored in evaluation (ignoreInEval, trainId 255:
unlabeled, ego vehicle, parking, caravan, ...) become void (segment id 0). Segments are in ascending id order.

The categories are the 19 evaluated classes of cityscapesscripts' labels.py (LABELS below, embedded so nothing
needs installing): 11 stuff (road .. sky) and 8 things (person .. bicycle, hasInstances), ids the label ids.
max_objects per split is the largest number of thing segments (crowd included) of one image. image_id is the
example's index in the split (stems sorted); filename the stem ("aachen_000000_000019").

Everything that would make a wrong example (an image without its id map or a map without its image, a stem twice,
a map whose size differs from its image, a label id the table does not hold, a v >= 1000 whose label v // 1000 has
no instances) is checked for every split, maps read, before tfds writes anything; one error lists every problem
(up to segjax.data.builder.MAX_LISTED), each naming the file, the value and the fix.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import json
import os
import pathlib
import re
from typing import Any, Mapping, NamedTuple

import numpy as np
import tensorflow_datasets as tfds

from segjax.data import png
from segjax.data.builder import raise_problems
from segjax.data.panoptic import coco
from segjax.data.panoptic import features


class Label(NamedTuple):
  name: str
  id: int
  train_id: int
  category: str
  has_instances: bool
  ignore_in_eval: bool


# cityscapesscripts/helpers/labels.py (name, id, trainId, category, hasInstances, ignoreInEval); license plate (id -1)
# never appears in a map.
LABELS = (
    Label("unlabeled", 0, 255, "void", False, True),
    Label("ego vehicle", 1, 255, "void", False, True),
    Label("rectification border", 2, 255, "void", False, True),
    Label("out of roi", 3, 255, "void", False, True),
    Label("static", 4, 255, "void", False, True),
    Label("dynamic", 5, 255, "void", False, True),
    Label("ground", 6, 255, "void", False, True),
    Label("road", 7, 0, "flat", False, False),
    Label("sidewalk", 8, 1, "flat", False, False),
    Label("parking", 9, 255, "flat", False, True),
    Label("rail track", 10, 255, "flat", False, True),
    Label("building", 11, 2, "construction", False, False),
    Label("wall", 12, 3, "construction", False, False),
    Label("fence", 13, 4, "construction", False, False),
    Label("guard rail", 14, 255, "construction", False, True),
    Label("bridge", 15, 255, "construction", False, True),
    Label("tunnel", 16, 255, "construction", False, True),
    Label("pole", 17, 5, "object", False, False),
    Label("polegroup", 18, 255, "object", False, True),
    Label("traffic light", 19, 6, "object", False, False),
    Label("traffic sign", 20, 7, "object", False, False),
    Label("vegetation", 21, 8, "nature", False, False),
    Label("terrain", 22, 9, "nature", False, False),
    Label("sky", 23, 10, "sky", False, False),
    Label("person", 24, 11, "human", True, False),
    Label("rider", 25, 12, "human", True, False),
    Label("car", 26, 13, "vehicle", True, False),
    Label("truck", 27, 14, "vehicle", True, False),
    Label("bus", 28, 15, "vehicle", True, False),
    Label("caravan", 29, 255, "vehicle", True, True),
    Label("trailer", 30, 255, "vehicle", True, True),
    Label("train", 31, 16, "vehicle", True, False),
    Label("motorcycle", 32, 17, "vehicle", True, False),
    Label("bicycle", 33, 18, "vehicle", True, False),
    Label("license plate", -1, -1, "vehicle", False, True),
)
ID2LABEL = {label.id: label for label in LABELS if label.id >= 0}
CATEGORIES = tuple({"id": label.id, "name": label.name, "isthing": label.has_instances}
                   for label in LABELS if not label.ignore_in_eval)
OFFSET = 1000  # v = label id * OFFSET + instance for thing instances
IMAGE_SUFFIX = "_leftImg8bit.png"
IDS_SUFFIX = "_instanceIds.png"
_GT_TAG = re.compile(r"_gt[A-Za-z]+$")  # "_gtFine" / "_gtCoarse" before IDS_SUFFIX
_MAP_MODES = ("L", "I", "I;16", "I;16L", "I;16B", "I;16N")  # single-channel integer PNGs
_LAYOUT = {"train": "train", "validation": "val"}
_THREADS = min(16, os.cpu_count() or 1)


def convert(values: np.ndarray) -> tuple[np.ndarray, list[dict[str, Any]], list[str]]:
  """COCO panoptic form of an instance-id map, as createPanopticImgs.py.

  Args:
    values: int [H, W] instance-id map values.

  Returns:
    (int64 [H, W] segment ids, 0 void; the segments (SEGMENT_KEYS) in ascending id order; the problems, each
    naming the value and the fix, without the file, which the caller adds).
  """
  values = np.asarray(values, np.int64)
  present, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
  keep = np.zeros(len(present), bool)
  segments, problems = [], []
  for k, (v, n) in enumerate(zip(present.tolist(), counts.tolist())):
    label_id, instance = (v, False) if v < OFFSET else (v // OFFSET, True)
    label = ID2LABEL.get(label_id)
    if label is None:
      what = f"value {v} (label {label_id}, instance {v % OFFSET})" if instance else f"value {v}"
      problems.append(f"{what} in {n} pixels is not a Cityscapes label id (0..33, cityscapesscripts' labels.py): "
                      "re-export the map with Cityscapes' label ids, or set those pixels to 0 (unlabeled)")
      continue
    if instance and not label.has_instances:
      problems.append(f"value {v} in {n} pixels is instance {v % OFFSET} of label {label_id} ({label.name}), which "
                      f"is not a thing class (hasInstances False): write {label_id} for that stuff region, or the id "
                      "of the thing class it belongs to")
      continue
    if label.ignore_in_eval:
      continue  # void, as createPanopticImgs.py skips it
    keep[k] = True
    segments.append({"id": v, "category_id": label.id, "isthing": label.has_instances,
                     "iscrowd": label.has_instances and not instance, "area": n})
  ids = np.where(keep[inverse.reshape(values.shape)], values, features.VOID)
  return ids, segments, problems


def read_values(path: pathlib.Path) -> np.ndarray:
  """int64 [H, W] values of an instance-id map PNG (8, 16 or 32 bits, one channel).

  Raises:
    ValueError: an unreadable file or one with colour channels (an RGB or palette map is not an instance-id map).
  """
  with png.open_image(path, what="instance-id map", fix="re-export it from Cityscapes' gtFine") as img:
    if img.mode not in _MAP_MODES:
      raise ValueError(f"instance-id map {path} is PIL mode {img.mode}, not a one-channel integer PNG: Cityscapes' "
                       "*_instanceIds.png hold label id or label id * 1000 + instance per pixel (16-bit); pass those "
                       "files, not the colour or label images")
    return np.asarray(img).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class CityscapesSplit:
  """One split's source (paths resolved): the folder of *_leftImg8bit.png and that of *_instanceIds.png."""
  split: str
  images_dir: str
  ids_dir: str


def _stem(path: pathlib.Path) -> str:
  if path.name.endswith(IMAGE_SUFFIX):
    return path.name[:-len(IMAGE_SUFFIX)]
  return _GT_TAG.sub("", path.name[:-len(IDS_SUFFIX)])


def find_pairs(source: CityscapesSplit, errors: list[str]) -> list[tuple[str, pathlib.Path, pathlib.Path]]:
  """(stem, image, id map) of a split in stem order; appends unmatched and duplicate files to `errors`."""
  found = []
  for folder, suffix in ((source.images_dir, IMAGE_SUFFIX), (source.ids_dir, IDS_SUFFIX)):
    by_stem = collections.defaultdict(list)
    for path in sorted(pathlib.Path(folder).rglob(f"*{suffix}")):
      by_stem[_stem(path)].append(path)
    for stem, paths in by_stem.items():
      if len(paths) > 1:
        errors.append(f"split {source.split!r}: stem {stem} has {len(paths)} files ({', '.join(map(str, paths))}): "
                      "keep one (pass the folder of one split and one annotation kind).")
    found.append({stem: paths[0] for stem, paths in by_stem.items()})
  images, maps = found
  for stem in sorted(set(images) - set(maps)):
    errors.append(f"split {source.split!r}: image {images[stem]} has no instance-id map {stem}_gtFine{IDS_SUFFIX} "
                  f"under {source.ids_dir}: add it, or remove the image.")
  for stem in sorted(set(maps) - set(images)):
    errors.append(f"split {source.split!r}: instance-id map {maps[stem]} has no image {stem}{IMAGE_SUFFIX} under "
                  f"{source.images_dir}: add it, or remove the map.")
  if not images and not maps:
    errors.append(f"split {source.split!r}: neither {source.images_dir} holds *{IMAGE_SUFFIX} nor {source.ids_dir} "
                  f"*{IDS_SUFFIX} files: pass Cityscapes' leftImg8bit and gtFine folders of the split.")
  return [(stem, images[stem], maps[stem]) for stem in sorted(set(images) & set(maps))]


def _check_pair(image: pathlib.Path, ids_path: pathlib.Path) -> tuple[list[str], int]:
  """Problems of one pair and its number of thing segments (crowd included)."""
  try:
    size = coco.image_size(image)
    values = read_values(ids_path)
  except ValueError as e:
    return [f"{e}."], 0
  problems = []
  if values.shape != size:
    problems.append(f"instance-id map {ids_path} is {values.shape[0]}x{values.shape[1]} (height x width) but its "
                    f"image {image} is {size[0]}x{size[1]}: pair the image with its own map (same stem).")
  _, segments, found = convert(values)
  problems += [f"instance-id map {ids_path}: {p}." for p in found]
  return problems, sum(s["isthing"] for s in segments)


def check_splits(sources: tuple[CityscapesSplit, ...]) -> tuple[dict[str, list], dict[str, int]]:
  """Pairs and checks every split ({split: pairs}, {split: max_objects}); one ValueError lists every problem."""
  errors: list[str] = []
  pairs, max_objects = {}, {}
  for s in sources:
    pairs[s.split] = find_pairs(s, errors)
    with concurrent.futures.ThreadPoolExecutor(_THREADS) as pool:
      results = list(pool.map(lambda p: _check_pair(p[1], p[2]), pairs[s.split]))
    for problems, _ in results:
      errors.extend(problems)
    max_objects[s.split] = max((n for _, n in results), default=0)
  raise_problems(errors, "Cityscapes data")
  return pairs, max_objects


@dataclasses.dataclass(eq=False)
class CityscapesConfig(tfds.core.BuilderConfig):
  """A BuilderConfig carrying the splits' sources."""
  sources: tuple[CityscapesSplit, ...] = ()


class SegjaxCityscapesPanoptic(tfds.core.GeneratorBasedBuilder):
  """Cityscapes-style instance-id maps as panoptic data; build it with `make_builder`."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}

  def _sources(self) -> tuple[CityscapesSplit, ...]:
    config = self.builder_config
    if not isinstance(config, CityscapesConfig) or not config.sources:
      raise ValueError("SegjaxCityscapesPanoptic needs a CityscapesConfig: build it with "
                       "segjax.data.panoptic.cityscapes.make_builder(...).")
    return config.sources

  def _info(self) -> tfds.core.DatasetInfo:
    listed = ", ".join(f"{s.split}: {s.ids_dir}" for s in self._sources())
    return features.info(self, homepage="https://www.cityscapes-dataset.com",
                         description=f"Cityscapes-style instance-id maps as panoptic segmentation ({listed}).")

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    pairs, max_objects = check_splits(self._sources())
    features.set_metadata(self, CATEGORIES, max_objects)
    return {split: self._generate_examples(p) for split, p in pairs.items()}

  def _generate_examples(self, pairs):
    for index, (stem, image_path, ids_path) in enumerate(pairs):
      image, _ = png.read_image(image_path, "RGB")
      ids, segments, _ = convert(read_values(ids_path))
      yield index, features.encode(image, ids, segments, index, stem)


def _sources(splits, manual_dir) -> tuple[CityscapesSplit, ...]:
  if splits is None:
    if manual_dir is None:
      raise ValueError("The cityscapes dataset needs its files: pass splits={split: (images_dir, instance_ids_dir)} "
                       "or manual_dir=<folder with leftImg8bit/{train,val}/ and gtFine/{train,val}/>.")
    root = pathlib.Path(os.fspath(manual_dir)).expanduser()
    splits = {s: (root / "leftImg8bit" / d, root / "gtFine" / d) for s, d in _LAYOUT.items()
              if (root / "leftImg8bit" / d).is_dir() and (root / "gtFine" / d).is_dir()}
    if not splits:
      raise ValueError(f"cityscapes manual_dir {root} holds neither leftImg8bit/train with gtFine/train nor "
                       "leftImg8bit/val with gtFine/val: unzip Cityscapes' leftImg8bit_trainvaltest.zip and "
                       "gtFine_trainvaltest.zip there, or pass splits={split: (images_dir, instance_ids_dir)}.")
  out = []
  for split, paths in dict(splits).items():
    if len(tuple(paths)) != 2:
      raise ValueError(f"cityscapes split {split!r}: give (images_dir, instance_ids_dir), got {paths!r}.")
    images_dir, ids_dir = (pathlib.Path(os.fspath(p)).expanduser().resolve() for p in paths)
    for what, folder in (("images", images_dir), ("instance-id maps", ids_dir)):
      if not folder.is_dir():
        raise ValueError(f"cityscapes split {split!r}: {what} folder {folder} does not exist or is not a folder: "
                         f"pass the folder holding the split's *{IMAGE_SUFFIX if what == 'images' else IDS_SUFFIX} "
                         "files (searched recursively).")
    out.append(CityscapesSplit(split, str(images_dir), str(ids_dir)))
  if not out:
    raise ValueError("cityscapes: splits is empty: give at least one {split: (images_dir, instance_ids_dir)}.")
  return tuple(out)


def make_builder(*, splits: Mapping[str, tuple[Any, Any]] | None = None, manual_dir=None, name: str = "cityscapes",
                 data_dir=None) -> SegjaxCityscapesPanoptic:
  """A tfds builder (not yet prepared) of Cityscapes-style data; the checks run when it is prepared.

  Args:
    splits: {split: (images_dir, instance_ids_dir)}; default: Cityscapes' layout under manual_dir (train,
      validation).
    manual_dir: a folder with leftImg8bit/ and gtFine/, used when splits is None.
    name: first part of the tfds config name `<name>-<hash8>`; the hash covers the paths and every image's and
      map's size and time, so edited or added files prepare afresh.
    data_dir: where prepared data lives; None: tfds' default.

  Raises:
    ValueError: a bad name, no splits, a missing folder.
  """
  if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", name):
    raise ValueError(f"cityscapes dataset name {name!r}: use letters, digits, '_', '.' and '-' (it names a tfds "
                     "config).")
  sources = _sources(splits, manual_dir)
  stats = []
  for s in sources:
    for folder, suffix in ((s.images_dir, IMAGE_SUFFIX), (s.ids_dir, IDS_SUFFIX)):
      for path in sorted(pathlib.Path(folder).rglob(f"*{suffix}")):
        st = path.stat()
        stats.append((str(path), st.st_size, st.st_mtime_ns))
  blob = json.dumps([str(SegjaxCityscapesPanoptic.VERSION), [dataclasses.astuple(s) for s in sources], stats])
  config = CityscapesConfig(name=f"{name}-{hashlib.sha256(blob.encode()).hexdigest()[:8]}", sources=sources,
                            description=f"segjax Cityscapes-style panoptic dataset {name!r}")
  return SegjaxCityscapesPanoptic(config=config, data_dir=os.fspath(data_dir) if data_dir else None,
                                  file_format="array_record")
