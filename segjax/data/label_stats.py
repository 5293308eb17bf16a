"""Labelled pixels per class of a split, counted once before training, and what they say about the data.

Masks that are entirely "ignore" train with loss 0 and no warning; a class that never occurs in the training split
can never be predicted. `check_training_labels` counts, per class, the labelled pixels of the training split (and
the ignored ones), then:
- raises a ValueError when nothing at all is labelled (naming the dataset's ignore label and the settings that
  usually cause it),
- warns about every class without a labelled pixel and every split image without one (up to a few named).

The count decodes every label once (threads: PIL releases the GIL while decoding) and is cached in the workdir,
keyed by the dataset block of the recipe, the split and its size, so a resumed run does not count again.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import os
import pathlib
from typing import Any, Callable

import numpy as np

log = logging.getLogger(__name__)

CACHE_FILE = "label_stats.json"
_NAMED = 5  # images without a labelled pixel named in the warning


def _label_of(example: dict[str, Any]) -> np.ndarray:
  label = np.asarray(example["label"])
  return label[..., 0] if label.ndim == 3 else label


def _name(example: dict[str, Any], index: int) -> str:
  name = example.get("filename", index)
  return name.decode() if isinstance(name, bytes) else str(name)


def count_pixels(source, num_classes: int, ignore_label: int | None, reduce_zero_label: bool = False,
                 threads: int | None = None) -> dict[str, Any]:
  """Labelled pixels per class over `source`, the ignored pixels, and the examples without a labelled pixel.

  Returns:
    {"class_pixels": [K ints], "ignored_pixels": int, "examples": N, "unlabelled_examples": [names],
     "out_of_range_pixels": int (ids beyond the classes; to_example refuses those when the example is read)}.
  """
  def one(index):
    example = source[index]
    label = _label_of(example)
    # bincount over the stored ids (uint8 / uint16): no cast of the whole mask to int64.
    counts = np.bincount(label.ravel(), minlength=256 if label.dtype == np.uint8 else 0)
    ignored = int(counts[ignore_label]) if ignore_label is not None and ignore_label < len(counts) else 0
    if ignore_label is not None and ignore_label < len(counts):
      counts[ignore_label] = 0
    if reduce_zero_label:
      ignored += int(counts[0])
      counts = counts[1:]
    per_class = np.zeros(num_classes, np.int64)
    n = min(num_classes, len(counts))
    per_class[:n] = counts[:n]
    return per_class, ignored, int(counts[num_classes:].sum()), _name(example, index)

  total = np.zeros(num_classes, np.int64)
  ignored = out_of_range = 0
  unlabelled = []
  with concurrent.futures.ThreadPoolExecutor(threads or min(8, os.cpu_count() or 1)) as pool:
    for per_class, ign, oor, name in pool.map(one, range(len(source))):
      total += per_class
      ignored += ign
      out_of_range += oor
      if not per_class.any():
        unlabelled.append(name)
  return {"class_pixels": [int(c) for c in total], "ignored_pixels": int(ignored), "examples": len(source),
          "unlabelled_examples": unlabelled, "out_of_range_pixels": int(out_of_range)}


def _key(dataset_config, split: str, num_examples: int) -> str:
  blob = json.dumps([dataset_config.to_dict() if hasattr(dataset_config, "to_dict") else str(dataset_config),
                     split, num_examples], sort_keys=True, default=str)
  return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cached_counts(source, spec, dataset_config, split: str, workdir: pathlib.Path | None) -> dict[str, Any]:
  """`count_pixels`, read from `workdir/label_stats.json` when it was counted for the same data before."""
  key = _key(dataset_config, split, len(source))
  path = None if workdir is None else pathlib.Path(workdir) / CACHE_FILE
  if path is not None and path.is_file():
    try:
      cached = json.loads(path.read_text())
      if cached.get("key") == key:
        return cached["stats"]
    except (OSError, ValueError, KeyError):
      pass  # a damaged cache is counted again
  stats = count_pixels(source, spec.num_classes, spec.ignore_label, spec.reduce_zero_label)
  if path is not None:
    try:
      tmp = path.with_suffix(".tmp")
      tmp.write_text(json.dumps({"key": key, "split": split, "stats": stats}))
      os.replace(tmp, path)
    except OSError as e:  # only a cache
      log.warning("Could not cache the label statistics in %s: %s", path, e)
  return stats


def check(stats: dict[str, Any], spec, split: str, dataset_name: str) -> list[str]:
  """The warnings `stats` of `split` call for.

  Raises:
    ValueError: no pixel of the split is labelled.
  """
  pixels = np.asarray(stats["class_pixels"])
  where = f"the training split {split!r} of dataset {dataset_name!r} ({stats['examples']} images)"
  if not pixels.any():
    ignore = ("" if spec.ignore_label is None else
              f"; every pixel is the ignore label {spec.ignore_label}" if stats["ignored_pixels"] else "")
    binary = ""
    if dataset_name == "folder" and spec.ignore_label == 255:
      binary = (" Binary masks saved as 0/255 need --config.dataset.folder.label_map='((255, 1),)'; "
                "masks whose 'not labelled' value is not 255 need --config.dataset.folder.ignore_index.")
    raise ValueError(f"No pixel of {where} is labelled{ignore}: training would have nothing to learn (loss 0). "
                     f"Check the masks and the dataset's ignore settings"
                     f"{' (reduce_zero_label is on: raw 0 is ignored)' if spec.reduce_zero_label else ''}.{binary}")
  warnings = []
  missing = [f"{i} {spec.class_names[i]!r}" for i in np.flatnonzero(pixels == 0)]
  if missing:
    warnings.append(
        f"{len(missing)} of {spec.num_classes} classes have no labelled pixel in {where}: "
        f"{', '.join(missing)}. The model cannot learn them; check the masks' ids against the class list "
        "(and, for binary 0/255 masks of a folder dataset, --config.dataset.folder.label_map='((255, 1),)').")
  unlabelled = stats["unlabelled_examples"]
  if unlabelled:
    shown = ", ".join(unlabelled[:_NAMED]) + (f" and {len(unlabelled) - _NAMED} more" if len(unlabelled) > _NAMED
                                              else "")
    warnings.append(f"{len(unlabelled)} of {stats['examples']} images of {where} have no labelled pixel (all "
                    f"ignore): {shown}. They add nothing to the loss.")
  return warnings


def check_training_labels(source, spec, dataset_config, split: str, workdir: pathlib.Path | None,
                          say: Callable[[str], None] = log.warning) -> dict[str, Any]:
  """Counts (or reads) the training split's labelled pixels, raises if there are none, `say`s the warnings."""
  stats = cached_counts(source, spec, dataset_config, split, workdir)
  for line in check(stats, spec, split, dataset_config.name):
    say(f"Warning: {line}")
  return stats
