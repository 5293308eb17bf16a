"""Which files make up a folder dataset, and its splits.

`list_examples` pairs the images, masks and validity masks by file stem (hidden files, sub-folders and other
extensions skipped; two files with one stem, an unpaired file, a dangling symbolic link or a JPEG index mask are
errors naming them); `assign_splits` divides the stems by the split files or by seeded fractions. No pixel is
read here (segjax.data.folder.read does that).
"""

import hashlib
import os
import pathlib

from segjax.data.folder.params import FLAG, FolderParams

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif")
MASK_EXTENSIONS = IMAGE_EXTENSIONS  # JPEG only for rgb masks, see read.read_mask.
MAX_LISTED = 20  # bad files listed by one preparation error (all are counted)


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

