"""Dataset registry and access: prepared tfds builders, read without TensorFlow.

Every dataset is a tfds `GeneratorBasedBuilder` written as ArrayRecord files,
so `data_source` gives random access (len(), __getitem__) to decoded examples
without importing TensorFlow. Each example is a dict with

  image:    uint8 [H, W, C]
  label:    uint8 [H, W, 1] raw class ids (a dataset's ignore id included)
  filename: bytes, the source file stem ("train_000017" for generated data)

Prepared data is cached under `data_dir` by builder name and version: a later
call reuses it and ignores `manual_dir`. Delete `<data_dir>/<tfds_name>` to
prepare again from other files.
"""

import dataclasses
import os
import re
from typing import Any

import tensorflow_datasets as tfds

from segjax.data import camvid
from segjax.data import isbi2012
from segjax.data import shapes


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What the rest of segjax needs to know about a dataset.

  Attributes:
    name: registry name, e.g. "shapes".
    tfds_name: the builder's tfds name.
    class_names: one name per class id.
    palette: display RGB per class id.
    ignore_label: raw label id meaning "not labelled", or None.
    num_channels: image channels.
    splits: splits always present once prepared.
    needs_manual_dir: whether preparing needs files given via manual_dir.
  """
  name: str
  tfds_name: str
  class_names: tuple[str, ...]
  palette: tuple[tuple[int, int, int], ...]
  ignore_label: int | None
  num_channels: int
  splits: tuple[str, ...]
  needs_manual_dir: bool

  @property
  def num_classes(self) -> int:
    return len(self.class_names)


DATASETS: dict[str, DatasetSpec] = {
    "shapes": DatasetSpec(
        name="shapes",
        tfds_name=shapes.SegjaxShapes.name,
        class_names=shapes.CLASS_NAMES,
        palette=shapes.PALETTE,
        ignore_label=None,
        num_channels=3,
        splits=tuple(shapes.SPLIT_SIZES),
        needs_manual_dir=False,
    ),
    "isbi2012": DatasetSpec(
        name="isbi2012",
        tfds_name=isbi2012.Isbi2012Membrane.name,
        class_names=isbi2012.CLASS_NAMES,
        palette=isbi2012.PALETTE,
        ignore_label=isbi2012.IGNORE_LABEL,
        num_channels=1,
        splits=("train", "test"),
        needs_manual_dir=True,
    ),
    # A "test" split exists too when the manual dir has test/ + testannot/.
    "camvid": DatasetSpec(
        name="camvid",
        tfds_name=camvid.Camvid.name,
        class_names=camvid.CLASS_NAMES,
        palette=camvid.PALETTE,
        ignore_label=camvid.IGNORE_LABEL,
        num_channels=3,
        splits=camvid.REQUIRED_SPLITS,
        needs_manual_dir=True,
    ),
}

_BUILDERS = {
    "shapes": shapes.SegjaxShapes,
    "isbi2012": isbi2012.Isbi2012Membrane,
    "camvid": camvid.Camvid,
}
# Why a split may be missing from prepared data.
_SPLIT_HINTS = {
    ("camvid", "test"): (
        " CamVid has a test split only when the manual_dir held test/ and "
        "testannot/ at prepare time: add them, delete the prepared copy under "
        "data_dir and prepare again."),
}
_LAYOUT_CHECKS = {
    "isbi2012": isbi2012.check_manual_dir,
    "camvid": camvid.check_manual_dir,
}


def get_spec(name: str) -> DatasetSpec:
  """Returns the spec of a registered dataset.

  Args:
    name: registry name.

  Returns:
    The DatasetSpec.

  Raises:
    ValueError: for an unknown name, listing the known ones.
  """
  try:
    return DATASETS[name]
  except KeyError:
    raise ValueError(
        f"Unknown dataset {name!r}; known datasets: {sorted(DATASETS)}."
    ) from None


def get_builder(name: str, *, data_dir=None, manual_dir=None):
  """Returns a prepared tfds builder, preparing the data on first use.

  Args:
    name: registry name.
    data_dir: where prepared data lives; None means tfds' default
      ($TFDS_DATA_DIR or ~/tensorflow_datasets).
    manual_dir: source files of a manual-dir dataset; only read when the
      dataset is not prepared yet. Ignored by datasets without one.

  Returns:
    A prepared `tfds.core.DatasetBuilder` in the array_record format.

  Raises:
    ValueError: unknown dataset, or a missing/badly laid out manual_dir.
  """
  spec = get_spec(name)
  builder = _BUILDERS[name](
      data_dir=os.fspath(data_dir) if data_dir is not None else None,
      file_format="array_record")
  if builder.is_prepared():
    return builder
  if spec.needs_manual_dir:
    # Check before tfds starts, so the error names segjax's fix.
    manual_dir = _LAYOUT_CHECKS[name](manual_dir)
  else:
    manual_dir = None
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(
          manual_dir=os.fspath(manual_dir) if manual_dir else None,
          # Our builders download nothing; don't look for copies on GCS.
          try_download_gcs=False,
      ))
  return builder


def _split_names(split: str) -> list[str]:
  # "train[:25]+validation[10%:]" -> ["train", "validation"].
  return [re.sub(r"\[.*\]$", "", part.strip()).strip()
          for part in split.split("+")]


def data_source(name: str, split: str, *, data_dir=None,
                manual_dir=None) -> Any:
  """Random-access source of decoded examples.

  Args:
    name: registry name.
    split: a split, optionally with tfds slicing, e.g. "train[:25]".
    data_dir: see `get_builder`.
    manual_dir: see `get_builder`.

  Returns:
    A sequence (len(), __getitem__) of example dicts, see the module doc.

  Raises:
    ValueError: unknown dataset or split, or a manual_dir problem.
  """
  builder = get_builder(name, data_dir=data_dir, manual_dir=manual_dir)
  available = list(builder.info.splits)
  for base in _split_names(split):
    if base not in available:
      raise ValueError(
          f"Unknown split {base!r} (in {split!r}) for dataset {name!r}; "
          f"available splits: {available}."
          + _SPLIT_HINTS.get((name, base), ""))
  return builder.as_data_source(split=split)
