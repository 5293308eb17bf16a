"""The folder dataset's parameters: FolderParams, their checks and the `config.dataset.folder` block.

Every FolderParams field is a key of `config.dataset.folder` (`config_block`); `params_from_config` turns a
filled-in block into FolderParams and `check_params` checks them before any file is read, naming the key to fix.
"""

import colorsys
import dataclasses
import os
import pathlib
import re

import ml_collections

NAME = "folder"  # the registry name (config.dataset.name) of the folder dataset
IGNORE_LABEL = 255
MAX_CLASSES = 255  # ids 0..254, so that IGNORE_LABEL stays free.
FLAG = "--config.dataset.folder"
MODES = {1: "L", 3: "RGB"}  # PIL mode of the stored image per num_channels
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
  if p.num_channels not in MODES:
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
