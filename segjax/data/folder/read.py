"""Reading a folder dataset's files: images, masks and validity masks into stored examples.

Every file is fully decoded (segjax.data.png.open_image), so an unreadable or truncated one is an error naming
it. Index masks become class ids through a lookup table over their raw values (`label_map`, then the ignore
check); rgb masks through the nearest palette colour within `palette_tolerance` (`rgb_to_ids`). Both work in
blocks of rows, so memory stays near the size of the decoded mask.
"""

import pathlib

import numpy as np

from segjax.data import png
from segjax.data.folder.params import FLAG, IGNORE_LABEL, MODES, FolderParams

# A 16-bit or float image has no single right reduction to 8 bits.
_WIDE_MODES = png.WIDE_MODES
_CHUNK = 1 << 18  # pixels per block of the mask lookups: bounds their temporaries
_INDEX_MODES = ("1", "L", "P", "I", "I;16", "I;16L", "I;16B", "I;16N")


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
  mode = MODES[num_channels]
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


def read_mask(path: pathlib.Path, params: FolderParams,
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
  label = read_mask(mask_path, params, seen)
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
