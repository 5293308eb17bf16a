"""Panoptic predictions written in COCO panoptic's result format, and read back.

COCO panoptic results (what panopticapi's `pq_compute` and the COCO evaluation server read) are a folder of PNGs,
one per image, holding segment ids in the RGB encoding id = R + 256 G + 256^2 B (`features.id2rgb`), and one JSON:

  {"annotations": [{"image_id", "file_name": "<stem>.png",
                    "segments_info": [{"id", "category_id", "iscrowd": 0, "area", "bbox": [x, y, w, h]}, ...]}, ...],
   "categories": [{"id", "name", "isthing"}, ...]}

A segment listed with no pixels in its PNG, or a PNG id no segment lists, makes pq_compute fail or miscount, so
`write_prediction` leaves empty segments out (the fusion can keep a stuff class whose pixels the things all took) and
refuses maps with unlisted ids. Things keep their "score" (pq_compute ignores it; other tools rank by it).

The JSON is the file that says a run finished: it is written atomically (a temporary file renamed into place, so an
interrupted run leaves none rather than half of one) and never replaces an existing one unless asked. PNGs of the
same stem are replaced: they are only meaningful through the JSON that lists them.
"""

from __future__ import annotations

import collections
import json
import os
import pathlib
from typing import Any, BinaryIO, Callable, Mapping, Sequence

import numpy as np
from PIL import Image

from segjax.data import png
from segjax.data.panoptic.features import id2rgb, rgb2id


def _atomic_write(path: pathlib.Path, write: Callable[[BinaryIO], Any]) -> None:
  """`write(f)` into a temporary file beside `path`, then renamed onto it: `path` is either absent, the old file or
  the whole new one, never part of one. The temporary name carries the process id so that parallel writers of
  different files in one folder never share it; it is opened normally (not mkstemp's 0600) so the file gets the
  usual permissions."""
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  try:
    with tmp.open("wb") as f:
      write(f)
    os.replace(tmp, path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise


def segment_info(panoptic: np.ndarray, segment: Mapping[str, Any]) -> dict[str, Any]:
  """COCO panoptic's entry for one segment of a map: "id", "category_id", "iscrowd" 0, "area" (its pixels in
  `panoptic`), "bbox" [x, y, w, h] in whole pixels as panopticapi's converters compute it (x = first column,
  w = last column - x + 1; [0, 0, 0, 0] for an empty segment) and, for things that have one, "score"."""
  seg_id = int(segment["id"])
  mask = np.asarray(panoptic) == seg_id
  cols, rows = np.flatnonzero(mask.any(axis=0)), np.flatnonzero(mask.any(axis=1))
  bbox = [0, 0, 0, 0]
  if cols.size:
    bbox = [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]
  info = {"id": seg_id, "category_id": int(segment["category_id"]), "iscrowd": 0, "area": int(mask.sum()),
          "bbox": bbox}
  if segment.get("isthing") and "score" in segment:
    info["score"] = float(segment["score"])
  return info


def _check_stem(file_stem: str) -> None:
  # The stem names a file inside out_dir: a separator or ".." would write elsewhere.
  if not file_stem or file_stem in (".", "..") or "/" in file_stem or "\\" in file_stem:
    raise ValueError(f"file_stem must be a plain file name without directories, got {file_stem!r}")


def write_prediction(out_dir: str | os.PathLike, file_stem: str, image_id: int, panoptic: np.ndarray,
                     segments: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """Writes one image's panoptic prediction as `<out_dir>/<file_stem>.png` and returns its JSON annotation.

  Args:
    out_dir: the PNG folder (created when missing).
    file_stem: the file name without ".png" (e.g. the image's own stem, as COCO names them).
    image_id: the image's id in the dataset.
    panoptic: int [H, W] segment ids, 0 = void, at most 256^3 - 1.
    segments: the segments' dicts ("id", "category_id", "isthing", "score" for things), as the fusion returns.

  Returns:
    {"image_id", "file_name": "<file_stem>.png", "segments_info": [`segment_info` of each segment with pixels, in
    the order of `segments`]}.

  Raises:
    ValueError: the map is not [H, W], two segments share an id, or the map holds ids no segment lists.
  """
  _check_stem(file_stem)
  panoptic = np.asarray(panoptic)
  if panoptic.ndim != 2:
    raise ValueError(f"panoptic must be [H, W], got shape {panoptic.shape}")
  ids = [int(s["id"]) for s in segments]
  if len(set(ids)) != len(ids):
    raise ValueError(f"image {image_id}: segment ids must be unique, got {ids}")
  unlisted = sorted(set(np.unique(panoptic).tolist()) - set(ids) - {0})
  if unlisted:
    raise ValueError(f"image {image_id}: the panoptic map holds segment ids {unlisted[:10]} that no segment lists "
                     f"(listed: {ids[:10]}); set those pixels to 0 (void) or list their segments")
  rgb = id2rgb(panoptic)  # checks the id range
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  path = out_dir / f"{file_stem}.png"
  _atomic_write(path, lambda f: Image.fromarray(rgb).save(f, format="PNG"))  # a reader never sees half a PNG
  infos = [segment_info(panoptic, s) for s in segments]
  return {"image_id": int(image_id), "file_name": path.name, "segments_info": [i for i in infos if i["area"] > 0]}


def _json_default(value):
  # numpy scalars in user-built annotations: json knows only Python numbers.
  if isinstance(value, np.generic):
    return value.item()
  raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def write_json(path: str | os.PathLike, annotations: Sequence[Mapping[str, Any]],
               categories: Sequence[Mapping[str, Any]], images: Sequence[Mapping[str, Any]] | None = None, *,
               overwrite: bool = False) -> pathlib.Path:
  """Writes the COCO panoptic predictions JSON: {"annotations", "categories": [{"id", "name", "isthing"}]} and
  "images" when given, atomically (temporary file + os.replace in the same folder).

  Args:
    path: the JSON file.
    annotations: `write_prediction`'s results.
    categories: dicts with "id", "name", "isthing" (other keys dropped), e.g. a dataset's metadata categories.
    images: COCO "images" entries ({"id", "file_name", "height", "width"}), copied as given.
    overwrite: replace an existing file.

  Returns:
    The path written.

  Raises:
    FileExistsError: `path` exists and `overwrite` is off.
    ValueError: two annotations share an image_id, or a segment's category is not in `categories`.
  """
  path = pathlib.Path(path)
  if path.exists() and not overwrite:
    raise FileExistsError(f"{path} exists already: pass overwrite=True to replace it, or write to another path")
  cats = [{"id": int(c["id"]), "name": str(c["name"]), "isthing": int(bool(c["isthing"]))} for c in categories]
  image_ids = [int(a["image_id"]) for a in annotations]
  repeated = sorted(i for i, n in collections.Counter(image_ids).items() if n > 1)
  if repeated:
    raise ValueError(f"image ids {repeated[:10]} have more than one annotation; pq_compute expects one per image")
  unknown = sorted({int(s["category_id"]) for a in annotations for s in a["segments_info"]} - {c["id"] for c in cats})
  if unknown:
    raise ValueError(f"segments have categories {unknown[:10]} missing from `categories` "
                     f"({[c['id'] for c in cats][:20]}); pass the dataset's full category list")
  content = {"annotations": list(annotations), "categories": cats}
  if images is not None:
    content["images"] = list(images)
  text = json.dumps(content, default=_json_default)
  path.parent.mkdir(parents=True, exist_ok=True)
  _atomic_write(path, lambda f: f.write(text.encode()))
  return path


def read_prediction(json_path: str | os.PathLike, png_dir: str | os.PathLike,
                    ) -> list[tuple[int, np.ndarray, dict[int, dict[str, Any]]]]:
  """The predictions of a COCO panoptic JSON and its PNG folder: per annotation, in the JSON's order,
  (image_id, panoptic int32 [H, W] of segment ids, {segment id: its segments_info entry})."""
  content = json.loads(pathlib.Path(json_path).read_text())
  out = []
  for annotation in content["annotations"]:
    with png.open_image(pathlib.Path(png_dir) / annotation["file_name"], "panoptic PNG",
                        "write the predictions again") as img:
      panoptic = rgb2id(np.asarray(img.convert("RGB"))).astype(np.int32)
    segments = {int(s["id"]): s for s in annotation["segments_info"]}
    out.append((int(annotation["image_id"]), panoptic, segments))
  return out
