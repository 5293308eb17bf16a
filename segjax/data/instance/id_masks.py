"""Folders of instance-id masks as a tfds builder (the Penn-Fudan layout).

  <images_dir>/<stem>.{png,jpg,jpeg,bmp,tif,tiff}
  <masks_dir>/<stem>.png or <stem>_mask.png     one id per object (0 = background), 8- or 16-bit grey or palette
  <classes_dir>/<stem>.json or <stem>.csv      optional: {"1": "person", "2": "bike"} / lines "1,person"

Penn-Fudan (PNGImages/ + PedMasks/FudanPed00001_mask.png, ids 1..n) reads as it is, with manual_dir pointing at
its folder. Each distinct nonzero id of a mask is one instance; its class comes from the image's table in
classes_dir, else from `id_classes` (one table for every image: {id: class name}), else every object is
class 1 (`class_names` default ("object",)). Boxes are the masks' tight boxes.

Splits: `split_files` ({split: text file of stems, one a line}), else `validation_fraction` of the stems, chosen
by a hash of the stem (stable when files are added) for "validation", the rest "train".

Every check (unpaired files, RGB masks, masks not the image's size, an id without a class, a class table naming
an unknown class or missing for an image) runs on every file before tfds writes anything; one error lists every
problem (up to segjax.data.builder.MAX_LISTED), naming the file and the fix. The tfds config name is
`<name>-<hash8>` over the options and the source files' sizes and times, so changed files prepare afresh.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import re
from typing import Any, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds

from segjax.data import png
from segjax.data.builder import raise_problems
from segjax.data.instance import features

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_MASK_SUFFIX = "_mask"
_PENN_FUDAN = ("PNGImages", "PedMasks")


@dataclasses.dataclass(frozen=True)
class IdMaskParams:
  """The folder dataset's options (paths resolved by `make_builder`); see the module doc."""
  images_dir: str
  masks_dir: str
  class_names: tuple[str, ...] = ("object",)
  id_classes: tuple[tuple[int, str], ...] | None = None
  classes_dir: str | None = None
  validation_fraction: float = 0.1
  split_files: tuple[tuple[str, str], ...] | None = None


def _files(folder: pathlib.Path, extensions: Sequence[str]) -> dict[str, pathlib.Path]:
  return {p.stem: p for p in sorted(folder.iterdir())
          if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in extensions}


def pair_files(p: IdMaskParams) -> dict[str, tuple[pathlib.Path, pathlib.Path]]:
  """stem -> (image, mask); a mask named <stem>_mask pairs with image <stem>.

  Raises:
    ValueError: an image without a mask or a mask without an image (every one named), or no image at all.
  """
  images = _files(pathlib.Path(p.images_dir), IMAGE_EXTENSIONS)
  masks = {}
  for stem, path in _files(pathlib.Path(p.masks_dir), (".png", ".bmp", ".tif", ".tiff")).items():
    key = stem[:-len(_MASK_SUFFIX)] if stem.endswith(_MASK_SUFFIX) and stem not in images else stem
    masks[key] = path
  errors = [f"Instance folder: image {images[s]} has no mask {p.masks_dir}/{s}.png (or {s}_mask.png): add its "
            "mask or move the image out of the folder." for s in sorted(set(images) - set(masks))]
  errors += [f"Instance folder: mask {masks[s]} has no image {p.images_dir}/{s}.<png|jpg|...>: add the image or "
             "move the mask out of the folder." for s in sorted(set(masks) - set(images))]
  raise_problems(errors, "Instance folder data")
  if not images:
    raise ValueError(f"Instance folder: {p.images_dir} holds no image ({', '.join(IMAGE_EXTENSIONS)}): pass the "
                     "folder of images as images_dir.")
  return {s: (images[s], masks[s]) for s in sorted(images)}


def assign_splits(p: IdMaskParams, stems: Sequence[str]) -> dict[str, list[str]]:
  """split -> stems, from split files or by a hash of each stem (module doc)."""
  if p.split_files:
    out, known = {}, set(stems)
    for split, path in p.split_files:
      listed = [s.strip() for s in pathlib.Path(path).read_text().splitlines() if s.strip()]
      unknown = [s for s in listed if s not in known]
      if unknown:
        raise ValueError(f"Instance folder: split file {path} ({split}) names {len(unknown)} stem(s) without an "
                         f"image and mask, e.g. {unknown[:5]}: fix the file or add those images.")
      out[split] = listed
    return out

  def fraction(stem: str) -> float:
    return int(hashlib.sha256(stem.encode()).hexdigest()[:8], 16) / 2 ** 32
  splits = {"train": [s for s in stems if fraction(s) >= p.validation_fraction]}
  if p.validation_fraction > 0:
    splits["validation"] = [s for s in stems if fraction(s) < p.validation_fraction]
  return splits


def _class_table(p: IdMaskParams, stem: str, errors: list[str]) -> dict[int, str] | None:
  """The image's {id: class name} (its file in classes_dir, else id_classes), None for "every id is class 1"."""
  if p.classes_dir is None:
    return dict(p.id_classes) if p.id_classes else None
  folder = pathlib.Path(p.classes_dir)
  for path in (folder / f"{stem}.json", folder / f"{stem}.csv"):
    if path.is_file():
      break
  else:
    errors.append(f"Instance folder: image {stem} has no class table {folder}/{stem}.json (or .csv): write one "
                  "mapping each of its mask's ids to a class name.")
    return {}
  try:
    if path.suffix == ".json":
      return {int(k): str(v) for k, v in json.loads(path.read_text()).items()}
    rows = [line.split(",") for line in path.read_text().splitlines() if line.strip()]
    return {int(r[0]): r[1].strip() for r in rows if r[0].strip().lower() != "id"}
  except (ValueError, IndexError, AttributeError) as e:
    errors.append(f"Instance folder: class table {path} cannot be read ({e}): write JSON {{\"1\": \"person\"}} or "
                  "CSV lines '1,person'.")
    return {}


def read_ids(mask_path: pathlib.Path) -> np.ndarray:
  """A mask's ids as an integer [H, W] array (grey or palette indices).

  Raises:
    ValueError: an unreadable file or a colour mask, naming the file and the fix.
  """
  with png.open_image(mask_path, what="Instance folder: mask") as img:
    if img.mode not in ("L", "P", "I", "I;16", "I;16L", "I;16B", "1"):
      raise ValueError(f"Instance folder: mask {mask_path} has mode {img.mode}; an instance-id mask holds one id "
                       "per pixel: save it as 8- or 16-bit greyscale (or palette) with 0 for background and 1..n "
                       "for the objects.")
    return np.asarray(png.upright(img)).astype(np.int64)


def read_instances(p: IdMaskParams, stem: str, image_path: pathlib.Path, mask_path: pathlib.Path,
                   errors: list[str]) -> tuple[np.ndarray, list[int], tuple[int, int]] | None:
  """The checked (ids map, class id per instance, image (height, width)); None after appending errors."""
  try:
    ids = read_ids(mask_path)
    with png.open_image(image_path, what="Instance folder: image") as img:
      size = tuple(png.upright(img).size[::-1])
  except ValueError as e:
    errors.append(str(e))
    return None
  if ids.shape != size:
    errors.append(f"Instance folder: mask {mask_path} is {ids.shape[0]}x{ids.shape[1]} but its image {image_path} "
                  f"is {size[0]}x{size[1]} (HxW): re-export the mask at the image's size.")
    return None
  table = _class_table(p, stem, errors)
  present = [int(i) for i in np.unique(ids) if i != 0]
  if table is None:
    return ids, [1] * len(present), size
  classes = []
  for i in present:
    name = table.get(i)
    if name is None:
      errors.append(f"Instance folder: mask {mask_path} has id {i}, which its class table does not name: add "
                    f"{i} to the table (ids {sorted(table)}) or set those pixels to 0.")
    elif name not in p.class_names:
      errors.append(f"Instance folder: the class table of {stem} maps id {i} to {name!r}, which class_names "
                    f"{list(p.class_names)} does not list: add it to class_names or fix the table.")
    else:
      classes.append(p.class_names.index(name) + 1)
  return (ids, classes, size) if len(classes) == len(present) else None


@dataclasses.dataclass(eq=False)
class IdMaskConfig(tfds.core.BuilderConfig):
  params: IdMaskParams | None = None


class SegjaxInstanceFolder(tfds.core.GeneratorBasedBuilder):
  """Images and instance-id masks from folders; build it with `make_builder`."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}

  def _params(self) -> IdMaskParams:
    config = self.builder_config
    if not isinstance(config, IdMaskConfig) or config.params is None:
      raise ValueError("SegjaxInstanceFolder needs an IdMaskConfig: build it with id_masks.make_builder(...).")
    return config.params

  def _info(self) -> tfds.core.DatasetInfo:
    p = self._params()
    return features.info(self, image_format="jpeg", description=(
        f"Instance folder dataset: images {p.images_dir}, instance-id masks {p.masks_dir}, classes "
        f"{list(p.class_names)}."))

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    p = self._params()
    pairs = pair_files(p)
    # tfds cannot finish a split without examples: a fraction that selects none leaves the split out.
    splits = {k: v for k, v in assign_splits(p, list(pairs)).items() if v}
    errors: list[str] = []
    counts = {}
    for stem, (image, mask) in pairs.items():  # every check before anything is written
      read = read_instances(p, stem, image, mask, errors)
      counts[stem] = len(read[1]) if read else 0
    raise_problems(errors, "Instance folder data")
    self.info.metadata.update(class_names=["background", *p.class_names],
                              max_objects={s: max((counts[t] for t in stems), default=0)
                                           for s, stems in splits.items()})
    return {split: self._generate_examples(p, pairs, stems) for split, stems in splits.items()}

  def _generate_examples(self, p: IdMaskParams, pairs, stems):
    image_ids = {stem: i for i, stem in enumerate(pairs)}  # position among all (sorted) stems, any split
    for stem in stems:
      image_path, mask_path = pairs[stem]
      errors: list[str] = []
      read = read_instances(p, stem, image_path, mask_path, errors)
      if read is None:  # changed since the checks ran
        raise_problems(errors, "Instance folder data")
      ids, classes, _ = read
      present = [int(i) for i in np.unique(ids) if i != 0]
      image, _ = png.read_jpeg(image_path)
      yield stem, {"image": image, "image_id": image_ids[stem], "filename": stem,
                   "objects": features.encode_objects([ids == i for i in present], classes,
                                                      [False] * len(present))}


def _resolve(path) -> str:
  return str(pathlib.Path(os.fspath(path)).expanduser().resolve())


def make_builder(*, images_dir=None, masks_dir=None, manual_dir=None, class_names: Sequence[str] = ("object",),
                 id_classes: Mapping[int, str] | None = None, classes_dir=None, validation_fraction: float = 0.1,
                 split_files: Mapping[str, Any] | None = None, name: str = "instances",
                 data_dir=None) -> SegjaxInstanceFolder:
  """A tfds builder (not yet prepared) of an instance-id mask folder; the pixel checks run when it is prepared.

  Args:
    images_dir, masks_dir: the folders; default manual_dir/images and manual_dir/masks (or Penn-Fudan's
      PNGImages and PedMasks).
    manual_dir: the folder holding them.
    class_names: the K object classes (no background); default one class, "object".
    id_classes: {mask id: class name} for every image.
    classes_dir: per-image tables <stem>.json / <stem>.csv (take precedence over id_classes).
    validation_fraction: share of stems in "validation" (0: only "train").
    split_files: {split: text file of stems} instead of the fraction.
    name: first part of the tfds config name `<name>-<hash8>`.
    data_dir: where prepared data lives; None: tfds' default.

  Raises:
    ValueError: missing folders, unpaired files, bad options.
  """
  if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", name):
    raise ValueError(f"Instance folder name {name!r}: use letters, digits, '_', '.' and '-' (it names a tfds config).")
  if images_dir is None or masks_dir is None:
    if manual_dir is None:
      raise ValueError("The instance folder dataset needs images_dir and masks_dir (or manual_dir holding images/ "
                       "and masks/, or Penn-Fudan's PNGImages/ and PedMasks/).")
    root = pathlib.Path(os.fspath(manual_dir)).expanduser()
    sub = _PENN_FUDAN if (root / _PENN_FUDAN[0]).is_dir() else ("images", "masks")
    images_dir, masks_dir = images_dir or root / sub[0], masks_dir or root / sub[1]
  for what, folder in (("images_dir", images_dir), ("masks_dir", masks_dir), ("classes_dir", classes_dir)):
    if folder is not None and not pathlib.Path(os.fspath(folder)).expanduser().is_dir():
      raise ValueError(f"Instance folder: {what} {folder} does not exist or is not a folder.")
  class_names = tuple(str(c) for c in class_names)
  if not class_names or len(set(class_names)) != len(class_names) or "background" in class_names:
    raise ValueError(f"Instance folder: class_names={list(class_names)}: give the object classes, each once, "
                     "without 'background' (id 0 is background).")
  if not 0 <= validation_fraction < 1:
    raise ValueError(f"Instance folder: validation_fraction={validation_fraction}: a fraction in [0, 1).")
  params = IdMaskParams(
      images_dir=_resolve(images_dir), masks_dir=_resolve(masks_dir), class_names=class_names,
      id_classes=tuple(sorted((int(k), str(v)) for k, v in id_classes.items())) if id_classes else None,
      classes_dir=_resolve(classes_dir) if classes_dir is not None else None,
      validation_fraction=float(validation_fraction),
      split_files=tuple((s, _resolve(f)) for s, f in split_files.items()) if split_files else None)
  pairs = pair_files(params)
  files = [f for pair in pairs.values() for f in pair] + [pathlib.Path(f) for _, f in params.split_files or ()]
  if params.classes_dir:
    files += sorted(pathlib.Path(params.classes_dir).iterdir())
  stats = [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
  blob = json.dumps([str(SegjaxInstanceFolder.VERSION), dataclasses.asdict(params), stats])
  config = IdMaskConfig(name=f"{name}-{hashlib.sha256(blob.encode()).hexdigest()[:8]}", params=params,
                        description=f"segjax instance folder dataset {name!r}")
  return SegjaxInstanceFolder(config=config, data_dir=os.fspath(data_dir) if data_dir else None,
                              file_format="array_record")
