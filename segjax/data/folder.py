"""Custom data from an images folder and a masks folder, as a tfds builder.

  <images_dir>/<stem>.{png,jpg,jpeg,bmp,tif,tiff,gif}   any size, any case
  <masks_dir>/<stem>.{png,bmp,tif,tiff,gif}             same stems and sizes
                                                        (+ jpg for rgb masks)
  <validity_dir>/<stem>.{png,bmp,tif,tiff,gif}          optional: 0 = invalid

Files are matched by stem; hidden files, sub-folders and other extensions are
skipped. Masks are either class-id maps ("index": the pixel value is the class
id, `ignore_index` means "not labelled") or colour-coded ("rgb": the nearest
`palette` colour within `palette_tolerance` gives the class). A pixel farther
than that from every colour is an error naming the mask and its colours, or,
with `off_palette="ignore"`, not labelled. The stored label holds class ids
0..N-1 and IGNORE_LABEL (255) wherever a pixel is not labelled, off the
palette (when ignored) or outside the validity mask.

Every image, mask and validity mask is fully decoded while preparing, so an
unreadable or truncated file is an error naming it (segjax.data.png.open_image)
instead of a grey or partial image in the prepared copy.

The tfds config name is `<name>-<hash8>`, the hash covering every parameter
(paths resolved) and the size and mtime of every source file: changing either
prepares afresh under data_dir instead of reusing stale data. Old prepared
copies stay in <data_dir>/segjax_folder/ until deleted.
"""

import colorsys
import dataclasses
import hashlib
import json
import os
import pathlib
import re

import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from segjax.data import png

IGNORE_LABEL = 255
MAX_CLASSES = 255  # ids 0..254, so that IGNORE_LABEL stays free.
FLAG = "--config.dataset.folder"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif")
MASK_EXTENSIONS = IMAGE_EXTENSIONS  # JPEG only for rgb masks, see _read_mask.
_JPEG_EXTENSIONS = (".jpg", ".jpeg")
_MODES = {1: "L", 3: "RGB"}
# A 16-bit or float image has no single right reduction to 8 bits.
_WIDE_MODES = ("I", "F", "I;16", "I;16L", "I;16B", "I;16N")
_INDEX_MODES = ("1", "L", "P", "I", "I;16", "I;16L", "I;16B", "I;16N")
# Trubetskoy's distinct colours after black, as in shapes.PALETTE.
_BASE_COLOURS = (
    (0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200),
    (245, 130, 48), (145, 30, 180), (70, 240, 240), (240, 50, 230),
    (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
    (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195),
    (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128),
)


def _pairs(value, cast):
  if isinstance(value, dict):
    value = value.items()
  return tuple((str(k), cast(v)) for k, v in value)


@dataclasses.dataclass(frozen=True)
class FolderParams:
  """Where the data is and how to read it; every field is a config key.

  Attributes:
    images_dir: folder of images (relative paths are from the CWD).
    masks_dir: folder of masks with the images' stems.
    class_names: one name per class id.
    palette: display RGB per class; for "rgb" masks also their colour code.
      None: distinct colours are derived (`derive_palette`).
    mask_format: "index" (pixel value = class id) or "rgb" (colour-coded).
    ignore_index: index-mask value meaning "not labelled"; >= num classes.
    palette_tolerance: rgb masks: a pixel within this RGB Euclidean distance
      of its nearest palette colour takes that class (anti-aliased edges, JPEG
      noise); what happens to farther pixels is `off_palette`.
    off_palette: rgb masks: "error" (a pixel beyond palette_tolerance of
      every colour fails preparation, naming the mask and the colours) or
      "ignore" (such pixels become IGNORE_LABEL, e.g. blended seams).
    ignore_color: rgb masks: RGB meaning "not labelled", matched like a
      palette colour (ties go to it).
    validity_dir: optional folder of masks with the same stems; pixels where
      they are 0 become IGNORE_LABEL.
    num_channels: images are converted to 1 (grayscale) or 3 (RGB) channels.
    split_files: ((split, text file of stems), ...) or a dict; one stem a
      line, blank lines and '#' comments ignored. Unlisted files are unused.
    split_fractions: ((split, fraction), ...) summing to 1; used when
      split_files is None.
    split_seed: seed of the split by fractions.
    reduce_zero_label: set from `config.dataset.reduce_zero_label` (not a key of the folder block).
  """
  images_dir: str
  masks_dir: str
  class_names: tuple[str, ...]
  palette: tuple[tuple[int, int, int], ...] | None = None
  mask_format: str = "index"
  ignore_index: int = 255
  palette_tolerance: float = 30.0
  off_palette: str = "error"
  ignore_color: tuple[int, int, int] | None = None
  validity_dir: str | None = None
  num_channels: int = 3
  split_files: tuple[tuple[str, str], ...] | None = None
  split_fractions: tuple[tuple[str, float], ...] = (
      ("train", 0.8), ("validation", 0.2))
  split_seed: int = 0
  # Not a folder key: copied from config.dataset.reduce_zero_label. Index masks then hold 0 ("other", ignored
  # later) and 1..K for the K class_names, so id K is accepted.
  reduce_zero_label: bool = False

  def __post_init__(self):
    # Normalise lists, dicts and Paths to tuples and str: hashable, and the
    # same params hash the same however they were written.
    def set_(field, value):
      object.__setattr__(self, field, value)
    for field in ("images_dir", "masks_dir", "validity_dir"):
      if getattr(self, field) is not None:
        set_(field, os.fspath(getattr(self, field)))
    set_("class_names", tuple(str(c) for c in self.class_names))
    if self.palette is not None:
      set_("palette", tuple(tuple(int(v) for v in c) for c in self.palette))
    if self.ignore_color is not None:
      set_("ignore_color", tuple(int(v) for v in self.ignore_color))
    if self.split_files is not None:
      set_("split_files", _pairs(self.split_files, os.fspath))
    set_("split_fractions", _pairs(self.split_fractions, float))
    set_("palette_tolerance", float(self.palette_tolerance))


def _fail(field, value, fix):
  raise ValueError(f"{FLAG}.{field}={value!r}: {fix}")


def _colour_ok(c) -> bool:
  return len(c) == 3 and all(0 <= v <= 255 for v in c)


def check_params(params: FolderParams) -> None:
  """Checks the parameters before tfds starts.

  Raises:
    ValueError: naming the config key (`--config.dataset.folder.<field>`),
      its value and the fix.
  """
  p = params
  for field in ("images_dir", "masks_dir", "validity_dir"):
    value = getattr(p, field)
    if value is not None and not pathlib.Path(value).expanduser().is_dir():
      _fail(field, value, f"no such directory (from {os.getcwd()}); give "
            "the folder's path")
  n = len(p.class_names)
  if not 1 <= n <= MAX_CLASSES or len(set(p.class_names)) != n:
    _fail("class_names", p.class_names, f"give 1 to {MAX_CLASSES} distinct "
          "names, one per class id (255 is kept for 'not labelled')")
  if p.palette is not None and (
      len(p.palette) != n or not all(map(_colour_ok, p.palette))):
    _fail("palette", p.palette, f"give one (R, G, B) in 0..255 per class "
          f"({n}), or None for derived display colours")
  if p.mask_format not in ("index", "rgb"):
    _fail("mask_format", p.mask_format, "choose 'index' or 'rgb'")
  if p.mask_format == "index" and p.ignore_index < n:
    _fail("ignore_index", p.ignore_index, f"must be >= the number of classes "
          f"({n}), or it would hide class {p.ignore_index}")
  if p.mask_format == "rgb":
    if p.palette is None:
      _fail("palette", None, "rgb masks are decoded with the palette: give "
            "one (R, G, B) per class")
    if len(set(p.palette)) != n:
      _fail("palette", p.palette, "rgb masks need distinct colours")
    if p.ignore_color is not None and (
        not _colour_ok(p.ignore_color) or p.ignore_color in p.palette):
      _fail("ignore_color", p.ignore_color, "give an (R, G, B) in 0..255 "
            "that is not a palette colour")
    if not p.palette_tolerance >= 0:
      _fail("palette_tolerance", p.palette_tolerance, "must be >= 0 (0: "
            "exact colours only)")
  if p.off_palette not in ("error", "ignore"):
    _fail("off_palette", p.off_palette, "choose 'error' (a mask pixel beyond "
          "palette_tolerance fails preparation) or 'ignore' (it is not "
          "labelled)")
  if p.num_channels not in _MODES:
    _fail("num_channels", p.num_channels, "choose 1 (grayscale) or 3 (RGB)")
  if p.split_files is not None:
    names = [s for s, _ in p.split_files]
    for _, path in p.split_files:
      if not pathlib.Path(path).expanduser().is_file():
        _fail("split_files", p.split_files, f"{path} is not a file")
    field, value = "split_files", p.split_files
  else:
    names = [s for s, _ in p.split_fractions]
    field, value = "split_fractions", p.split_fractions
    fractions = [f for _, f in p.split_fractions]
    if not fractions or min(fractions) <= 0 or abs(sum(fractions) - 1) > 1e-6:
      _fail(field, value, "give positive fractions that sum to 1")
  if not names or len(set(names)) != len(names) or "all" in names or not all(
      re.fullmatch(r"[A-Za-z0-9_]+", s) for s in names):
    _fail(field, value, "give distinct split names of letters, digits and _ "
          "('all' is reserved by tfds)")


def derive_palette(num_classes: int) -> tuple[tuple[int, int, int], ...]:
  """Distinct display colours: black, Trubetskoy's 20, golden-ratio hues."""
  colours = list(_BASE_COLOURS[:num_classes])
  i = 0
  while len(colours) < num_classes:
    hue = (i * 0.6180339887498949) % 1.0
    sat, val = ((0.9, 0.9), (0.55, 1.0), (1.0, 0.6))[i % 3]
    c = tuple(round(255 * v) for v in colorsys.hsv_to_rgb(hue, sat, val))
    if c not in colours:
      colours.append(c)
    i += 1
  return tuple(colours)


def spec_fields(params: FolderParams):
  """What the registry's DatasetSpec needs.

  Returns:
    (class_names, palette, ignore_label, num_channels, splits); the palette
    is derived when params.palette is None.
  """
  splits = params.split_files or params.split_fractions
  palette = params.palette or derive_palette(len(params.class_names))
  return (params.class_names, palette, IGNORE_LABEL, params.num_channels,
          tuple(s for s, _ in splits))


# ----------------------------------------------------------- listing, splits


def _list(folder: str, extensions, what: str) -> dict[str, pathlib.Path]:
  """stem -> file of a folder; two files with one stem are an error."""
  found = {}
  for path in sorted(pathlib.Path(folder).expanduser().iterdir()):
    if (path.name.startswith(".") or not path.is_file()
        or path.suffix.lower() not in extensions):
      continue
    if path.stem in found:
      raise ValueError(
          f"Folder dataset: {found[path.stem]} and {path} are two {what}s "
          f"with the stem {path.stem!r}: keep one of them.")
    found[path.stem] = path
  return found


def _unpaired(have: dict, need: dict, what: str, folder: str, field: str):
  missing = sorted(set(need) - set(have))
  if missing:
    path = need[missing[0]]
    raise ValueError(
        f"Folder dataset: {path} has no {what} in {folder} ({len(missing)} "
        f"unpaired, e.g. {missing[:5]}): add {folder}/{missing[0]}.<ext> "
        f"(stems must match) or point {FLAG}.{field} at the right folder.")


def list_examples(params: FolderParams) -> dict:
  """stem -> (image, mask, validity or None) paths, sorted by stem.

  Raises:
    ValueError: an empty images folder, a file without its partner, two
      files with one stem, or a JPEG index mask.
  """
  p = params
  images = _list(p.images_dir, IMAGE_EXTENSIONS, "image")
  if not images:
    raise ValueError(
        f"Folder dataset: images_dir {p.images_dir} holds no images "
        f"({', '.join(IMAGE_EXTENSIONS)}): fix {FLAG}.images_dir.")
  masks = _list(p.masks_dir, MASK_EXTENSIONS, "mask")
  _unpaired(masks, images, "mask", p.masks_dir, "masks_dir")
  _unpaired(images, masks, "image", p.images_dir, "images_dir")
  validity = {}
  if p.validity_dir is not None:
    validity = _list(p.validity_dir, MASK_EXTENSIONS, "validity mask")
    _unpaired(validity, images, "validity mask", p.validity_dir,
              "validity_dir")
  lossless = list(validity.values())
  if p.mask_format == "index":
    lossless += list(masks.values())
  for path in lossless:
    if path.suffix.lower() in _JPEG_EXTENSIONS:
      raise ValueError(
          f"Folder dataset: {path} is a JPEG; JPEG's lossy compression "
          "changes ids at edges: save index and validity masks as PNG "
          f"(or use {FLAG}.mask_format='rgb' for colour-coded masks).")
  return {s: (images[s], masks[s], validity.get(s)) for s in sorted(images)}


def _read_split_file(split: str, path: str, stems) -> list[str]:
  listed = {}
  for line_no, line in enumerate(pathlib.Path(path).read_text().splitlines(),
                                 1):
    stem = line.split("#", 1)[0].strip()
    if not stem:
      continue
    where = f"Folder dataset: split file {path}, line {line_no}"
    if stem not in stems:
      raise ValueError(
          f"{where}: {stem!r} is not the stem of an image in the images "
          "folder: list file names without folder or extension, one a line.")
    if stem in listed:
      raise ValueError(f"{where}: {stem!r} is listed twice (first on line "
                       f"{listed[stem]}): remove one.")
    listed[stem] = line_no
  if not listed:
    raise ValueError(f"Folder dataset: split file {path} ({split!r}) lists "
                     "no stems: add some or drop the split.")
  return list(listed)


def assign_splits(params: FolderParams, stems) -> dict[str, list[str]]:
  """split -> stems, from the split files or a seeded split by fractions.

  The split by fractions orders stems by sha256(seed, stem), so it depends
  only on the seed and the set of stems (not on listing order, numpy's
  random streams or the Python version); each split then takes its share.

  Raises:
    ValueError: a bad split file, a stem in two splits, an empty split.
  """
  stems = sorted(stems)
  if params.split_files is not None:
    splits, seen = {}, {}
    for split, path in params.split_files:
      splits[split] = _read_split_file(split, path, set(stems))
      for stem in splits[split]:
        if stem in seen:
          raise ValueError(
              f"Folder dataset: {stem!r} is in split {seen[stem]!r} and in "
              f"split {split!r} (split file {path}): a file may be in one "
              "split only.")
        seen[stem] = split
    return splits
  order = sorted(stems, key=lambda s: (hashlib.sha256(
      f"{params.split_seed}\0{s}".encode()).hexdigest(), s))
  exact = [f * len(stems) for _, f in params.split_fractions]
  counts = [int(e) for e in exact]
  # Largest remainders get the files left over by rounding down.
  by_remainder = sorted(range(len(exact)), key=lambda i: counts[i] - exact[i])
  for i in by_remainder[:len(stems) - sum(counts)]:
    counts[i] += 1
  splits, start = {}, 0
  for (split, fraction), count in zip(params.split_fractions, counts):
    if count == 0:
      raise ValueError(
          f"Folder dataset: split {split!r} gets no files ({fraction} of "
          f"{len(stems)}): add images, raise its share in "
          f"{FLAG}.split_fractions or give {FLAG}.split_files.")
    splits[split] = sorted(order[start:start + count])
    start += count
  return splits


# -------------------------------------------------------------------- pixels


def _wide(img) -> bool:
  return img.mode in _WIDE_MODES


def _open(path: pathlib.Path, what: str):
  """The fully decoded image (png.open_image), with the folder's fix."""
  return png.open_image(
      path, f"Folder dataset: {what}",
      f"re-export it, or remove the pair with stem {path.stem!r} (image and "
      "mask) from the images and masks folders")


def read_image(path: pathlib.Path, num_channels: int):
  """PNG bytes of an image in the stored mode, and its (height, width).

  tfds reads Image features back with OpenCV if installed, else PIL, without
  converting modes, and an Image feature has one encoding_format. So every
  image is stored as an 8-bit PNG in the stored mode: an 8-bit PNG in that
  mode as is, anything else converted from PIL's decode and re-encoded
  (lossless w.r.t. that decode; JPEG decoders differ between libjpeg builds,
  so this also pins the pixels). First frame of GIF/TIFF; alpha dropped.

  Raises:
    ValueError: an unreadable or truncated file, or a 16-bit/float image.
  """
  mode = _MODES[num_channels]
  with _open(path, "image") as img:
    if _wide(img):
      raise ValueError(
          f"Folder dataset: image {path} has mode {img.mode} (16-bit or "
          "float); reducing it to 8 bits needs a scaling only you can "
          "choose: save the images as 8-bit first.")
    shape = (img.height, img.width)
    data = path.read_bytes()
    # IHDR bit depth 8 and colour type 0 (gray) / 2 (RGB), no tRNS: readers
    # agree on exactly these pixels.
    if (img.format == "PNG" and img.mode == mode and data[24] == 8
        and data[25] == (0 if mode == "L" else 2)
        and "transparency" not in img.info):
      return data, shape
    array = np.asarray(img.convert(mode))
  return png.encode(array), shape


def _nearest(rgb: np.ndarray, colours):
  """The distinct colours of `rgb` and the nearest of `colours` to each.

  Returns:
    (values int64 [U, 3], inverse [H * W] into values, nearest [U] index
    into colours, squared distance [U] to it); ties go to the lower index.
  """
  colours = np.asarray(colours, np.int64)
  # Distances per distinct colour, not per pixel: masks hold few colours.
  packed = (rgb[..., 0].astype(np.int64) << 16 | rgb[..., 1].astype(np.int64)
            << 8 | rgb[..., 2])
  unique, inverse = np.unique(packed.ravel(), return_inverse=True)
  values = np.stack([unique >> 16, unique >> 8 & 255, unique & 255], -1)
  nearest = np.empty(len(unique), np.int64)
  d2 = np.empty(len(unique), np.int64)
  for start in range(0, len(unique), 1 << 14):  # Bounds memory for JPEGs.
    block = values[start:start + (1 << 14)]
    d2_all = ((block[:, None, :] - colours[None]) ** 2).sum(-1)
    nearest[start:start + len(block)] = d2_all.argmin(1)
    d2[start:start + len(block)] = d2_all.min(1)
  return values, inverse.ravel(), nearest, d2


def _with_ignore(palette, ignore_color):
  """Colours to match (ignore_color first, so ties go to it) and their ids."""
  if ignore_color is None:
    return list(palette), np.arange(len(palette), dtype=np.uint8)
  return [ignore_color] + list(palette), np.array(
      [IGNORE_LABEL] + list(range(len(palette))), np.uint8)


def rgb_to_ids(rgb: np.ndarray, palette, tolerance: float,
               ignore_color=None) -> np.ndarray:
  """Class ids of a colour-coded mask.

  Args:
    rgb: uint8 [H, W, 3].
    palette: (R, G, B) per class.
    tolerance: largest Euclidean RGB distance to the nearest colour.
    ignore_color: an (R, G, B) meaning "not labelled", or None.

  Returns:
    uint8 [H, W]: the nearest colour's class; IGNORE_LABEL where the nearest
    colour is ignore_color or farther than tolerance. Ties go to ignore_color,
    then to the lower class id.
  """
  colours, lut = _with_ignore(palette, ignore_color)
  _, inverse, nearest, d2 = _nearest(rgb, colours)
  ids = np.where(d2 <= tolerance * tolerance, lut[nearest], IGNORE_LABEL)
  return ids.astype(np.uint8)[inverse].reshape(rgb.shape[:2])


def _decode_rgb(path: pathlib.Path, rgb: np.ndarray,
                params: FolderParams) -> np.ndarray:
  """rgb_to_ids, raising for off-palette pixels unless off_palette='ignore'.

  Raises:
    ValueError: naming the mask, how many pixels are beyond tolerance, up to
      3 of their colours (most frequent first) with the nearest palette
      colour and its distance, and the fixes.
  """
  colours, lut = _with_ignore(params.palette, params.ignore_color)
  values, inverse, nearest, d2 = _nearest(rgb, colours)
  tol = params.palette_tolerance
  off = d2 > tol * tol
  if params.off_palette == "error" and off.any():
    counts = np.bincount(inverse, minlength=len(values))
    order = np.flatnonzero(off)[np.argsort(-counts[off], kind="stable")]
    examples = []
    for i in order[:3]:
      j = nearest[i]
      name = ("ignore_color" if lut[j] == IGNORE_LABEL
              else f"class {params.class_names[lut[j]]!r}")
      examples.append(
          f"{tuple(int(v) for v in values[i])} x {counts[i]} px, nearest "
          f"{tuple(colours[j])} ({name}) at distance {np.sqrt(d2[i]):.1f}")
    pixels, kinds = int(counts[off].sum()), int(off.sum())
    raise ValueError(
        f"Folder dataset: rgb mask {path} has {pixels} pixel"
        f"{'s' * (pixels != 1)} in {kinds} colour{'s' * (kinds != 1)} "
        "farther than "
        f"palette_tolerance={tol:g} from every palette colour, e.g. "
        f"{'; '.join(examples)}. Fix: add the colour to {FLAG}.palette (and "
        f"a name to {FLAG}.class_names), raise {FLAG}.palette_tolerance "
        f"above the distance if they are blended edges, or set "
        f"{FLAG}.off_palette='ignore' to leave such pixels unlabelled.")
  ids = np.where(off, IGNORE_LABEL, lut[nearest]).astype(np.uint8)
  return ids[inverse].reshape(rgb.shape[:2])


def _read_mask(path: pathlib.Path, params: FolderParams) -> np.ndarray:
  """Stored uint8 class ids of a mask (IGNORE_LABEL = not labelled)."""
  n = len(params.class_names) + int(params.reduce_zero_label)
  with _open(path, "mask") as img:
    if params.mask_format == "rgb":
      if _wide(img):
        raise ValueError(
            f"Folder dataset: rgb mask {path} has mode {img.mode}; expected "
            "8-bit colours: save it as an RGB PNG.")
      return _decode_rgb(path, np.asarray(img.convert("RGB")), params)
    if img.mode not in _INDEX_MODES:
      raise ValueError(
          f"Folder dataset: index mask {path} has mode {img.mode}; expected "
          "one channel of class ids (L, P, I;16, I): for colour-coded masks "
          f"set {FLAG}.mask_format='rgb' and {FLAG}.palette.")
    if img.format == "JPEG":
      raise ValueError(f"Folder dataset: index mask {path} is a JPEG: save "
                       "it as PNG (JPEG changes ids at edges).")
    ids = np.asarray(img).astype(np.int64)
  bad = (ids >= n) & (ids != params.ignore_index) | (ids < 0)
  if bad.any():
    value = int(ids[bad][0])
    raise ValueError(
        f"Folder dataset: mask {path} holds id {value} ({int(bad.sum())} "
        f"pixels); ids must be 0..{n - 1} ({len(params.class_names)} class_names"
        f"{', raw 0 reduced away' if params.reduce_zero_label else ''}) or the ignore "
        f"index {params.ignore_index}: add class names "
        f"({FLAG}.class_names), set {FLAG}.ignore_index={value} if it marks "
        "unlabelled pixels, or fix the mask.")
  return np.where(ids == params.ignore_index, IGNORE_LABEL, ids).astype(
      np.uint8)


def _read_validity(path: pathlib.Path) -> np.ndarray:
  with _open(path, "validity mask") as img:
    if img.format == "JPEG":
      raise ValueError(f"Folder dataset: validity mask {path} is a JPEG: "
                       "save it as PNG (JPEG noise turns 0 into 1).")
    valid = np.asarray(img) != 0
  return valid.any(-1) if valid.ndim == 3 else valid


def read_example(stem: str, paths, params: FolderParams) -> dict:
  """The stored example of one (image, mask, validity) triple.

  Raises:
    ValueError: naming the file: unreadable or truncated, a size mismatch,
      ids beyond the classes, colours off the palette (see FolderParams).
  """
  image_path, mask_path, validity_path = paths
  image, shape = read_image(image_path, params.num_channels)
  label = _read_mask(mask_path, params)
  others = [(mask_path, label)]
  if validity_path is not None:
    valid = _read_validity(validity_path)
    others.append((validity_path, valid))
  for path, array in others:
    if array.shape != shape:
      raise ValueError(
          f"Folder dataset: {path} is {array.shape[0]}x{array.shape[1]} but "
          f"its image {image_path} is {shape[0]}x{shape[1]} (HxW): masks "
          "must have their image's size; re-export the mask at "
          f"{shape[0]}x{shape[1]} (nearest-neighbour, so ids stay ids) or "
          "remove the pair.")
  if validity_path is not None:
    label = np.where(valid, label, IGNORE_LABEL).astype(np.uint8)
  return {"image": image, "label": png.encode(label), "filename": stem}


# --------------------------------------------------------------------- tfds


@dataclasses.dataclass(eq=False)
class FolderConfig(tfds.core.BuilderConfig):
  """A BuilderConfig carrying the (path-resolved) FolderParams."""
  params: FolderParams | None = None


class SegjaxFolder(tfds.core.GeneratorBasedBuilder):
  """Images and masks from folders; build it with `make_builder`."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _params(self) -> FolderParams:
    config = self.builder_config
    if not isinstance(config, FolderConfig) or config.params is None:
      raise ValueError("SegjaxFolder needs a FolderConfig: build it with "
                       "segjax.data.folder.make_builder(params).")
    return config.params

  def _info(self) -> tfds.core.DatasetInfo:
    p = self._params()
    return tfds.core.DatasetInfo(
        builder=self,
        description=(
            f"Custom folder dataset, {len(p.class_names)} classes "
            f"{list(p.class_names)}; label {IGNORE_LABEL} = not labelled. "
            f"Images from {p.images_dir}, masks from {p.masks_dir}."),
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(
                shape=(None, None, p.num_channels), encoding_format="png"),
            "label": tfds.features.Image(
                shape=(None, None, 1), encoding_format="png"),
            "filename": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
        # Record order: split-file line order, else sorted stems.
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    p = self._params()
    examples = list_examples(p)
    return {split: self._generate_examples(stems, examples)
            for split, stems in assign_splits(p, examples).items()}

  def _generate_examples(self, stems, examples):
    p = self._params()
    for key, stem in enumerate(stems):
      yield key, read_example(stem, examples[stem], p)


def _resolved(params: FolderParams) -> FolderParams:
  def resolve(path):
    return None if path is None else str(
        pathlib.Path(path).expanduser().resolve())
  split_files = params.split_files and tuple(
      (s, resolve(f)) for s, f in params.split_files)
  return dataclasses.replace(
      params, images_dir=resolve(params.images_dir),
      masks_dir=resolve(params.masks_dir),
      validity_dir=resolve(params.validity_dir), split_files=split_files)


def _config_name(params: FolderParams, examples: dict, name: str) -> str:
  """`<name>-<hash8>` of the resolved params and the source files' stats."""
  if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", name):
    raise ValueError(f"Folder dataset name {name!r}: use letters, digits, "
                     "'_', '.' and '-' (it names a tfds config).")
  files = [f for triple in examples.values() for f in triple if f]
  files += [pathlib.Path(f) for _, f in params.split_files or ()]
  stats = [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
  blob = json.dumps([str(SegjaxFolder.VERSION), dataclasses.asdict(params),
                     stats])
  return f"{name}-{hashlib.sha256(blob.encode()).hexdigest()[:8]}"


def make_builder(params: FolderParams, *, name: str = "custom",
                 data_dir=None) -> SegjaxFolder:
  """A tfds builder (not yet prepared) for `params`.

  Everything but the pixels is checked here, before tfds starts. Prepare with
  `builder.download_and_prepare(download_config=
  tfds.download.DownloadConfig(try_download_gcs=False))` unless
  `builder.is_prepared()`; read with `builder.as_data_source(split)`.

  Args:
    params: the folder parameters.
    name: user name of the dataset, first part of the tfds config name.
    data_dir: where prepared data lives; None: tfds' default.

  Returns:
    A SegjaxFolder with config `<name>-<hash8>`, in array_record format.

  Raises:
    ValueError: bad params, folders that do not pair up, bad splits.
  """
  check_params(params)
  params = _resolved(params)
  examples = list_examples(params)
  assign_splits(params, examples)
  config = FolderConfig(name=_config_name(params, examples, name),
                        params=params,
                        description=f"segjax folder dataset {name!r}")
  return SegjaxFolder(
      config=config, data_dir=os.fspath(data_dir) if data_dir else None,
      file_format="array_record")


# ------------------------------------------------------------------- config

_OPTIONAL_TYPES = {"images_dir": str, "masks_dir": str, "class_names": tuple,
                   "palette": tuple, "ignore_color": tuple,
                   "validity_dir": str, "split_files": tuple}


def config_block() -> ml_collections.ConfigDict:
  """`config.dataset.folder`: every FolderParams field with its default."""
  block = ml_collections.ConfigDict()
  for field in dataclasses.fields(FolderParams):
    if field.name == "reduce_zero_label":
      continue
    default = field.default
    if default is dataclasses.MISSING or default is None:
      default = ml_collections.FieldReference(
          None, field_type=_OPTIONAL_TYPES[field.name])
    block[field.name] = default
  return block


def params_from_config(cfg: ml_collections.ConfigDict, reduce_zero_label: bool = False) -> FolderParams:
  """FolderParams from a `config_block()` a recipe filled in (and `config.dataset.reduce_zero_label`).

  Raises:
    ValueError: naming a required key left unset.
  """
  for key in ("images_dir", "masks_dir", "class_names"):
    if cfg[key] is None:
      raise ValueError(f"{FLAG}.{key} is not set: the folder dataset needs "
                       "images_dir, masks_dir and class_names.")
  return FolderParams(**{f.name: cfg[f.name] for f in dataclasses.fields(FolderParams)
                         if f.name != "reduce_zero_label"}, reduce_zero_label=bool(reduce_zero_label))
