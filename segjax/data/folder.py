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
palette (when ignored) or outside the validity mask. `label_map` maps raw
index-mask values to class ids first (binary 0/255 masks: ((255, 1),)).

Images and masks are turned upright by their EXIF orientation (as PIL's
ImageOps.exif_transpose) and images converted to num_channels by
png.to_channels, which predict.py shares.

Every image, mask and validity mask is fully decoded while preparing, so an
unreadable or truncated file is an error naming it (segjax.data.png.open_image)
instead of a grey or partial image in the prepared copy. Preparation reads
every file before failing, and one error lists every bad file (up to
MAX_LISTED); tfds writes into a temporary folder that a failure removes, so
nothing is left that a later run would take as prepared.

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
_MODES = {1: "L", 3: "RGB"}
# A 16-bit or float image has no single right reduction to 8 bits.
_WIDE_MODES = png.WIDE_MODES
MAX_LISTED = 20  # bad files listed by one preparation error (all are counted)
_CHUNK = 1 << 18  # pixels per block of the mask lookups: bounds their temporaries
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
    label_map: index masks: ((raw value, class id), ...) or a dict, applied
      before the ignore check; e.g. ((255, 1),) for binary 0/255 masks. A
      class id may also be ignore_index (not labelled).
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
  label_map: tuple[tuple[int, int], ...] = ()
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
    label_map = self.label_map or ()
    if isinstance(label_map, dict):
      label_map = label_map.items()
    set_("label_map", tuple(tuple(int(v) for v in pair) for pair in label_map))
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
  if p.label_map:
    if p.mask_format != "index":
      _fail("label_map", p.label_map, "maps index-mask values: leave it "
            "empty for rgb masks (their colours are the palette)")
    raw = [r for r, _ in p.label_map]
    top = n - 1 + int(p.reduce_zero_label)
    if (any(len(pair) != 2 for pair in p.label_map) or len(set(raw)) != len(raw)
        or not all(0 <= r <= 65535 for r in raw)
        or not all(0 <= c <= top or c == p.ignore_index
                   for _, c in p.label_map)):
      _fail("label_map", p.label_map, "give distinct (raw value 0..65535, "
            f"class id 0..{top} or the ignore_index {p.ignore_index}) pairs, "
            "e.g. ((255, 1),)")
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
  """stem -> file of a folder; two files with one stem are an error.

  Raises:
    ValueError: two files with one stem, or symbolic links to targets that do
      not exist (all of them named with their targets).
  """
  found, dangling = {}, []
  for path in sorted(pathlib.Path(folder).expanduser().iterdir()):
    if path.name.startswith(".") or path.suffix.lower() not in extensions:
      continue
    if path.is_symlink() and not path.exists():
      dangling.append(f"{path} -> {os.readlink(path)}")
      continue
    if not path.is_file():
      continue
    if path.stem in found:
      raise ValueError(
          f"Folder dataset: {found[path.stem]} and {path} are two {what}s "
          f"with the stem {path.stem!r}: keep one of them.")
    found[path.stem] = path
  if dangling:
    raise ValueError(
        f"Folder dataset: {len(dangling)} {what}"
        f"{'s are symbolic links' if len(dangling) > 1 else ' is a symbolic link'}"
        f" to a target that does not exist: {'; '.join(dangling[:MAX_LISTED])}"
        f"{f' (and {len(dangling) - MAX_LISTED} more)' if len(dangling) > MAX_LISTED else ''}"
        ": restore the target (e.g. mount or copy the data it points to) or "
        "remove the link.")
  return found


def _is_jpeg(path: pathlib.Path) -> bool:
  """Whether the file is a JPEG by its content (SOI marker), whatever its name."""
  try:
    with open(path, "rb") as f:
      return f.read(3) == b"\xff\xd8\xff"
  except OSError:  # unreadable: preparation names it (png.open_image)
    return False


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
      files with one stem, a dangling symbolic link, or a JPEG index or
      validity mask (by content, not by name).
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
  lossless = [("validity mask", v) for v in validity.values()]
  if p.mask_format == "index":
    lossless += [("index mask", m) for m in masks.values()]
  for what, path in lossless:
    if _is_jpeg(path):  # by content: a PNG named .jpg is fine
      raise ValueError(
          f"Folder dataset: {what} {path} is a JPEG (by its content); JPEG's "
          "lossy compression changes ids at edges: save index and validity "
          f"masks as PNG (or use {FLAG}.mask_format='rgb' for colour-coded "
          "masks).")
  return {s: (images[s], masks[s], validity.get(s)) for s in sorted(images)}


def _read_split_file(split: str, path: str, stems) -> list[str]:
  listed = {}
  for line_no, line in enumerate(pathlib.Path(path).read_text(
      encoding="utf-8-sig").splitlines(),
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
  so this also pins the pixels). First frame of GIF/TIFF; the conversion is
  png.to_channels (EXIF orientation applied, alpha dropped), as predict.py's.

  Raises:
    ValueError: an unreadable or truncated file, or a 16-bit/float image.
  """
  mode = _MODES[num_channels]
  with _open(path, "image") as img:
    shape = (img.height, img.width)
    if img.format == "PNG" and img.mode == mode and not png.oriented(img):
      with open(path, "rb") as f:
        header = f.read(26)
      # IHDR bit depth 8 and colour type 0 (gray) / 2 (RGB), no tRNS: readers
      # agree on exactly these pixels. (An EXIF orientation is applied by
      # OpenCV and ignored by PIL, so such a file is re-encoded upright.)
      as_is = (header[24] == 8 and header[25] == (0 if mode == "L" else 2)
               and "transparency" not in img.info)
    else:
      as_is = False
    if not as_is:
      # Encoded from PIL's image, not a numpy copy of it: one buffer fewer.
      converted = png.channels_image(img, num_channels,
                                     "Folder dataset: image", path)
      return png.encode(converted), (converted.height, converted.width)
  # The decoded pixels (the check that the file is whole) are freed before
  # the bytes are read: PIL's __exit__ keeps them, close() releases them.
  img.close()
  del img
  return path.read_bytes(), shape


def _row_blocks(shape):
  """Row slices of about _CHUNK pixels: lookups run per block, so their index
  temporaries (numpy indexes with intp) stay small beside the image."""
  step = max(1, _CHUNK // max(1, int(np.prod(shape[1:2]))))
  return [slice(r, r + step) for r in range(0, shape[0], step)]


def _pack(rgb: np.ndarray) -> np.ndarray:
  """uint8 [..., 3] -> uint32 0xRRGGBB."""
  return (rgb[..., 0].astype(np.uint32) << 16 | rgb[..., 1].astype(np.uint32)
          << 8 | rgb[..., 2])


def _nearest(rgb: np.ndarray, colours):
  """The distinct colours of `rgb` and the nearest of `colours` to each.

  Returns:
    (packed uint32 [U] sorted distinct colours, values int64 [U, 3], counts
    int64 [U] pixels of each, nearest [U] index into colours, squared
    distance [U] to it); ties go to the lower index.
  """
  colours = np.asarray(colours, np.int64)
  # Distinct colours block by block (a whole-mask np.unique sorts int64
  # copies of it), then distances per distinct colour: masks hold few.
  parts = [np.unique(_pack(rgb[rows]), return_counts=True)
           for rows in _row_blocks(rgb.shape)]
  unique, inverse = np.unique(np.concatenate([u for u, _ in parts]),
                              return_inverse=True)
  counts = np.bincount(inverse.ravel(), np.concatenate([c for _, c in parts]),
                       minlength=len(unique)).astype(np.int64)
  wide = unique.astype(np.int64)
  values = np.stack([wide >> 16, wide >> 8 & 255, wide & 255], -1)
  nearest = np.empty(len(unique), np.int64)
  d2 = np.empty(len(unique), np.int64)
  for start in range(0, len(unique), 1 << 14):  # Bounds memory for JPEGs.
    block = values[start:start + (1 << 14)]
    d2_all = ((block[:, None, :] - colours[None]) ** 2).sum(-1)
    nearest[start:start + len(block)] = d2_all.argmin(1)
    d2[start:start + len(block)] = d2_all.min(1)
  return unique, values, counts, nearest, d2


def _lookup_colours(rgb: np.ndarray, unique: np.ndarray,
                    ids: np.ndarray) -> np.ndarray:
  """uint8 [H, W]: ids[i] where rgb is the colour unique[i]."""
  out = np.empty(rgb.shape[:2], np.uint8)
  for rows in _row_blocks(rgb.shape):
    out[rows] = ids[np.searchsorted(unique, _pack(rgb[rows]))]
  return out


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
  unique, _, _, nearest, d2 = _nearest(rgb, colours)
  ids = np.where(d2 <= tolerance * tolerance, lut[nearest], IGNORE_LABEL)
  return _lookup_colours(rgb, unique, ids.astype(np.uint8))


def _decode_rgb(path: pathlib.Path, rgb: np.ndarray,
                params: FolderParams) -> np.ndarray:
  """rgb_to_ids, raising for off-palette pixels unless off_palette='ignore'.

  Raises:
    ValueError: naming the mask, how many pixels are beyond tolerance, up to
      3 of their colours (most frequent first) with the nearest palette
      colour and its distance, and the fixes.
  """
  colours, lut = _with_ignore(params.palette, params.ignore_color)
  unique, values, counts, nearest, d2 = _nearest(rgb, colours)
  tol = params.palette_tolerance
  off = d2 > tol * tol
  if params.off_palette == "error" and off.any():
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
  return _lookup_colours(rgb, unique, ids)


def _index_lut(params: FolderParams, size: int):
  """(stored id per raw value 0..size-1, whether each raw value is allowed).

  label_map first, then the ignore check: a raw value mapped to ignore_index
  (or left at it) becomes IGNORE_LABEL; ids 0..n-1 stay as they are.
  """
  n = len(params.class_names) + int(params.reduce_zero_label)
  mapped = np.arange(size, dtype=np.int64)
  for raw, cls in params.label_map:
    if raw < size:
      mapped[raw] = cls
  ignored = mapped == params.ignore_index
  allowed = ignored | (mapped < n)
  lut = np.where(ignored, IGNORE_LABEL, np.where(allowed, mapped, 0))
  return lut.astype(np.uint8), allowed


def _index_ids(path: pathlib.Path, ids: np.ndarray, params: FolderParams,
               seen: set | None) -> np.ndarray:
  """Stored ids of a raw index mask (uint8 or uint16), via a lookup table.

  Args:
    path: the mask, for messages.
    ids: its raw values, uint8 or uint16 [H, W].
    params: the folder parameters.
    seen: raw values present in the masks so far; updated.

  Raises:
    ValueError: a value that is neither a class id nor the ignore index.
  """
  size = 256 if ids.dtype == np.uint8 else 65536
  counts = np.zeros(size, np.int64)
  for rows in _row_blocks(ids.shape):  # bincount casts to intp: per block
    counts += np.bincount(ids[rows].ravel(), minlength=size)
  present = np.flatnonzero(counts)
  lut, allowed = _index_lut(params, size)
  bad = present[~allowed[present]]
  if bad.size:
    _bad_id(path, int(bad[0]), int(counts[bad].sum()), params)
  if seen is not None:
    seen.update(present.tolist())
  out = np.empty(ids.shape, np.uint8)
  for rows in _row_blocks(ids.shape):
    out[rows] = lut[ids[rows]]
  return out


def _bad_id(path, value: int, pixels: int, params: FolderParams):
  n = len(params.class_names) + int(params.reduce_zero_label)
  raise ValueError(
      f"Folder dataset: mask {path} holds id {value} ({pixels} "
      f"pixels); ids must be 0..{n - 1} ({len(params.class_names)} class_names"
      f"{', raw 0 reduced away' if params.reduce_zero_label else ''}) or the ignore "
      f"index {params.ignore_index}: add class names "
      f"({FLAG}.class_names), set {FLAG}.ignore_index={value} if it marks "
      f"unlabelled pixels, map it to a class with {FLAG}.label_map="
      f"\"(({value}, <class id>),)\", or fix the mask.")


def _read_mask(path: pathlib.Path, params: FolderParams,
               seen: set | None = None) -> np.ndarray:
  """Stored uint8 class ids of a mask (IGNORE_LABEL = not labelled).

  Works in the mask's own dtype with lookup tables, so memory stays near the
  size of the decoded mask. `seen` collects the raw values of index masks.
  """
  with _open(path, "mask") as img:
    if params.mask_format == "rgb":
      if _wide(img):
        raise ValueError(
            f"Folder dataset: rgb mask {path} has mode {img.mode}; expected "
            "8-bit colours: save it as an RGB PNG.")
      img = png.upright(img)
      rgb = np.asarray(img if img.mode == "RGB" else img.convert("RGB"))
      del img
      return _decode_rgb(path, rgb, params)
    if img.mode not in _INDEX_MODES:
      raise ValueError(
          f"Folder dataset: index mask {path} has mode {img.mode}; expected "
          "one channel of class ids (L, P, I;16, I): for colour-coded masks "
          f"set {FLAG}.mask_format='rgb' and {FLAG}.palette.")
    if img.format == "JPEG":
      raise ValueError(f"Folder dataset: index mask {path} is a JPEG: save "
                       "it as PNG (JPEG changes ids at edges).")
    img = png.upright(img)
    ids = np.asarray(img)
    del img
  if ids.dtype == bool:  # mode "1": ids 0 and 1
    ids = ids.view(np.uint8)
  elif ids.dtype != np.uint8 and ids.dtype != np.uint16:  # I: int32
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high > 65535:
      value = low if low < 0 else high
      _bad_id(path, value, int(np.count_nonzero(ids == value)), params)
    ids = ids.astype(np.uint16)  # native order (I;16B too), half of int32
  return _index_ids(path, ids, params, seen)


def _read_validity(path: pathlib.Path) -> np.ndarray:
  with _open(path, "validity mask") as img:
    if img.format == "JPEG":
      raise ValueError(f"Folder dataset: validity mask {path} is a JPEG: "
                       "save it as PNG (JPEG noise turns 0 into 1).")
    valid = np.asarray(png.upright(img)) != 0
  return valid.any(-1) if valid.ndim == 3 else valid


def read_example(stem: str, paths, params: FolderParams,
                 seen: set | None = None) -> dict:
  """The stored example of one (image, mask, validity) triple.

  Args:
    stem: the files' stem.
    paths: (image, mask, validity or None) paths.
    params: the folder parameters.
    seen: raw values present in index masks so far; updated (see
      `binary_mask_error`).

  Raises:
    ValueError: naming the file: unreadable or truncated, a size mismatch,
      ids beyond the classes, colours off the palette (see FolderParams).
  """
  image_path, mask_path, validity_path = paths
  image, shape = read_image(image_path, params.num_channels)
  label = _read_mask(mask_path, params, seen)
  others = [(mask_path, label)]
  if validity_path is not None:
    valid = _read_validity(validity_path)
    others.append((validity_path, valid))
  for path, array in others:
    if array.shape != shape:
      raise ValueError(
          f"Folder dataset: {path} is {array.shape[0]}x{array.shape[1]} but "
          f"its image {image_path} is {shape[0]}x{shape[1]} (HxW, after "
          "each file's EXIF orientation): masks must have their image's "
          f"size; re-export the mask at {shape[0]}x{shape[1]} "
          "(nearest-neighbour, so ids stay ids) or remove the pair.")
  if validity_path is not None:
    label[~valid] = IGNORE_LABEL
  return {"image": image, "label": png.encode(label), "filename": stem}


def binary_mask_error(params: FolderParams, seen: set) -> str | None:
  """The error for 0/255 masks whose 255 would silently become "ignore".

  Decided over the whole folder from the raw values read while preparing
  (`seen`), so no mask is decoded twice: 2 class_names, ignore_index 255, no
  label_map, every mask's values within {0, 255} and 255 present.

  Returns:
    The message, or None when the folder is not such a case.
  """
  p = params
  if (p.mask_format != "index" or p.label_map or p.reduce_zero_label
      or len(p.class_names) != 2 or p.ignore_index != 255
      or 255 not in seen or not seen <= {0, 255}):
    return None
  a, b = p.class_names
  return (
      f"Folder dataset: every mask in {p.masks_dir} holds only the values 0 "
      f"and 255, and with 2 class_names ({a!r}, {b!r}) and ignore_index=255, "
      f"255 would mean 'not labelled', so class {b!r} (id 1) would have no "
      "pixel at all. If 255 marks "
      f"{b!r} (a binary 0/255 mask), map it: {FLAG}.label_map=\"((255, 1),)\". "
      f"If 255 really means unlabelled, say so: {FLAG}.label_map="
      f"\"((255, 255),)\" (class {b!r} then has no pixel at all).")


def _placeholder(num_channels: int) -> dict:
  one = np.zeros((1, 1), np.uint8)
  return {"image": png.encode(one if num_channels == 1 else
                              np.zeros((1, 1, 3), np.uint8)),
          "label": png.encode(one), "filename": ""}


class _Collector:
  """Per-file errors of one preparation over all its splits.

  Each split's generator reads every file, records errors and yields nothing
  more after the first; the last split to finish raises one ValueError listing
  them, so tfds never renames its temporary folder into a prepared copy.
  """

  def __init__(self, params: FolderParams, splits: int):
    self.params = params
    self.remaining = splits
    self.errors: list[str] = []
    self.seen: set[int] = set()

  def split_done(self):
    self.remaining -= 1
    if self.remaining:
      return
    errors = list(self.errors)
    binary = binary_mask_error(self.params, self.seen)
    if binary:
      errors.insert(0, binary)
    if not errors:
      return
    listed = "\n".join(f"  {i}. {e}" for i, e in
                       enumerate(errors[:MAX_LISTED], 1))
    more = (f"\n  ... and {len(errors) - MAX_LISTED} more"
            if len(errors) > MAX_LISTED else "")
    if len(errors) == 1:
      raise ValueError(f"{errors[0]} (Nothing was prepared.)")
    raise ValueError(
        f"Folder dataset: {len(errors)} problems, nothing was prepared; fix "
        f"them all, then run again:\n{listed}{more}")


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
    splits = assign_splits(p, examples)
    collector = _Collector(p, len(splits))
    return {split: self._generate_examples(stems, examples, collector)
            for split, stems in splits.items()}

  def _generate_examples(self, stems, examples, collector=None):
    p = self._params()
    collector = collector or _Collector(p, 1)
    yielded = False
    for key, stem in enumerate(stems):
      try:
        example = read_example(stem, examples[stem], p, collector.seen)
      except ValueError as e:
        collector.errors.append(str(e))
        continue
      if not collector.errors:  # after an error nothing will be kept
        yield key, example
        yielded = True
    if collector.errors and not yielded:
      # tfds refuses to finish a split with no examples, which would stop
      # before the later splits are read; this placeholder is never kept,
      # as the last split raises (see _Collector).
      yield len(stems), _placeholder(p.num_channels)
    collector.split_done()


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
