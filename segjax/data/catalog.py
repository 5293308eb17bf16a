"""tfds catalog datasets, read without TensorFlow, in segjax's example format.

Wraps `builder.as_data_source(split)` of three tfds catalog builders and
converts every example on access to what the rest of segjax reads:

  image:    uint8 [H, W, C], as stored by tfds
  label:    uint8 [H, W, 1] class ids, IGNORE_LABEL (255) where unlabelled
  filename: str, the source file stem

A 256-entry numpy lookup table turns the dataset's raw mask values into class
ids; raw values the table does not name become 255.

The datasets and their per-dataset data (class lists, label maps, splits) are the
tables of segjax.data.catalog_tables (`CATALOG`), re-exported here.

Preparing any of them runs tfds' own builder, which needs TensorFlow (it
extracts and lists files with tf.io.gfile); reading the prepared ArrayRecord
files does not. Prepared data is cached under `data_dir` as usual for tfds.
"""

import importlib.util
import operator
import os
import pathlib
import re
from typing import Any, Mapping

import numpy as np
import tensorflow_datasets as tfds

from segjax.data import spec
# The tables, re-exported: callers read them as catalog.CATALOG, catalog.ADE20K_CLASS_NAMES, ...
from segjax.data.catalog_tables import (  # pylint: disable=unused-import
    ADE20K_CLASS_NAMES, ADE20K_PALETTE, CATALOG, CITYSCAPES_CLASS_NAMES, CITYSCAPES_FILES,
    CITYSCAPES_ID_TO_TRAIN_ID, CITYSCAPES_LABELS, CITYSCAPES_PALETTE, IGNORE_LABEL, INSTANCE_TO_ADE20K,
    PET_CLASS_NAMES, PET_PALETTE, PET_TRIMAP_BACKGROUND, PET_TRIMAP_BORDER, PET_TRIMAP_CLASS_NAMES,
    PET_TRIMAP_PALETTE, PET_TRIMAP_PET, SCENE_PARSE_CLASS_NAMES, SCENE_PARSE_PALETTE, CatalogDataset)

MANUAL_DIR_FLAG = "--config.dataset.manual_dir"
DATA_DIR_FLAG = "--config.dataset.data_dir"
TF_EXTRA = "pip install 'segjax[tf]'"

# What the registry (segjax.data.datasets) reads: one DatasetSpec per catalog dataset.
SPECS: dict[str, spec.DatasetSpec] = {
    name: spec.DatasetSpec(name=name, tfds_name=e.tfds_name, class_names=e.class_names, palette=e.palette,
                           ignore_label=e.ignore_label, num_channels=e.num_channels, splits=e.splits,
                           needs_manual_dir=e.needs_manual_dir)
    for name, e in CATALOG.items()}


def get_dataset(name: str) -> CatalogDataset:
  """The catalog entry called `name`.

  Raises:
    ValueError: for an unknown name, listing the known ones.
  """
  try:
    return CATALOG[name]
  except KeyError:
    raise ValueError(f"Unknown catalog dataset {name!r}; known: "
                     f"{sorted(CATALOG)}.") from None


def tfds_split(dataset: CatalogDataset, split: str) -> str:
  """Translates a segjax split spec into the tfds one, keeping any slicing.

  "validation[:10%]+train" for oxford_iiit_pet -> "test[:10%]+train".

  Raises:
    ValueError: a split name the dataset does not have.
  """
  parts = []
  for part in split.split("+"):
    match = re.fullmatch(r"\s*([^\[\(\s]+)(.*?)\s*", part)
    base = match.group(1) if match else part.strip()
    if base not in dataset.split_map:
      raise ValueError(
          f"Unknown split {base!r} (in {split!r}) for dataset "
          f"{dataset.name!r}; available splits: {list(dataset.split_map)}."
          + dataset.split_hint)
    parts.append(dataset.split_map[base] + match.group(2))
  return "+".join(parts)


def check_manual_dir(dataset: CatalogDataset, manual_dir) -> pathlib.Path:
  """Checks that the manual dir holds the files `dataset` needs.

  Returns:
    The directory as a Path.

  Raises:
    ValueError: naming the files to place and the flag to pass.
  """
  files = ", ".join(dataset.manual_files)
  fix = (f"download {files} (registration needed at "
         "https://www.cityscapes-dataset.com/downloads/) into one directory "
         f"and pass {MANUAL_DIR_FLAG}=/path/to/it (or manual_dir= to "
         "segjax.data.catalog.data_source).")
  if manual_dir is None:
    raise ValueError(f"{dataset.name} needs its files on disk: {fix}")
  root = pathlib.Path(os.fspath(manual_dir)).expanduser()
  if not root.is_dir():
    raise ValueError(f"{dataset.name} manual_dir {root} does not exist or is "
                     f"not a directory: {fix}")
  missing = [f for f in dataset.manual_files if not (root / f).is_file()]
  if missing:
    raise ValueError(f"{dataset.name} manual_dir {root} has no "
                     f"{', '.join(missing)}: {fix}")
  return root


def _tensorflow_available() -> bool:
  try:
    return importlib.util.find_spec("tensorflow") is not None
  except (ImportError, ValueError):  # ValueError: None in sys.modules.
    return False


def _needs_tensorflow(dataset: CatalogDataset) -> str:
  tfds_name, _, config = dataset.tfds_name.partition("/")
  manual = " --manual_dir=DIR" if dataset.needs_manual_dir else ""
  config = f" --config={config}" if config else ""
  return (
      f"Preparing the tfds catalog dataset {dataset.tfds_name} (segjax "
      f"dataset {dataset.name!r}) needs TensorFlow: tfds' own builder "
      f"{dataset.how_to_prepare}. Install the optional "
      f"extra with `{TF_EXTRA}` (tensorflow-cpu) and run again; once "
      "prepared, reading needs no TensorFlow. Or prepare it on a machine "
      f"that has TensorFlow: `tfds build {tfds_name}{config} "
      f"--file_format=array_record --data_dir=DATA_DIR{manual}`, then copy "
      f"the DATA_DIR/{tfds_name} folder into this machine's data dir "
      f"(~/tensorflow_datasets, or the one {DATA_DIR_FLAG} names).")


def get_builder(name: str, *, data_dir=None, manual_dir=None):
  """Returns the prepared tfds builder of a catalog dataset.

  Args:
    name: catalog name.
    data_dir: where prepared data lives; None means tfds' default.
    manual_dir: directory with the source files of a manual-download
      dataset (cityscapes); only read when not prepared yet.

  Returns:
    A prepared `tfds.core.DatasetBuilder` in the array_record format.

  Raises:
    ValueError: unknown dataset or a missing/incomplete manual_dir.
    ImportError: preparing is needed and TensorFlow is not installed.
  """
  dataset = get_dataset(name)
  builder = tfds.builder(
      dataset.tfds_name,
      data_dir=os.fspath(data_dir) if data_dir is not None else None,
      file_format="array_record")
  if builder.is_prepared():
    return builder
  root = None
  if dataset.needs_manual_dir:
    root = check_manual_dir(dataset, manual_dir)
  # Fail before tfds starts downloading gigabytes it then cannot extract.
  if not _tensorflow_available():
    raise ImportError(_needs_tensorflow(dataset))
  try:
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            manual_dir=os.fspath(root) if root else None))
  except ModuleNotFoundError as e:
    # TensorFlow present for find_spec but failing to import.
    if (e.name or "").partition(".")[0] != "tensorflow":
      raise
    raise ImportError(_needs_tensorflow(dataset)) from e
  return builder


class CatalogSource:
  """Random access to one split of a catalog dataset in segjax's format.

  Wraps the tfds data source; len() and indices are the tfds ones. Picklable
  when the wrapped source is (tfds' ArrayRecord sources are), so grain
  workers can use it.
  """

  def __init__(self, source, dataset: CatalogDataset, split: str):
    self._source = source
    self._dataset = dataset
    self._split = split
    self._table = dataset.lookup_table()

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index) -> dict[str, Any]:
    index = operator.index(index)
    return self.convert(self._source[index], index)

  def __getitems__(self, indices) -> list[dict[str, Any]]:
    indices = [operator.index(i) for i in indices]
    many = getattr(self._source, "__getitems__", None)
    raws = many(indices) if many else [self._source[i] for i in indices]
    return [self.convert(raw, i) for raw, i in zip(raws, indices)]

  def __repr__(self) -> str:
    return (f"CatalogSource({self._dataset.name!r}, split={self._split!r}, "
            f"len={len(self)})")

  def convert(self, raw: Mapping[str, Any], index: int) -> dict[str, Any]:
    """Converts one decoded tfds example of this split.

    Args:
      raw: the tfds example, as the wrapped source returns it.
      index: its position in the split, naming examples without a file name.

    Returns:
      {"image": uint8 [H, W, C], "label": uint8 [H, W, 1], "filename": str}.

    Raises:
      ValueError: a mask that is not uint8 or has the wrong rank.
    """
    ds = self._dataset
    if ds.filename_key is None:
      position = index + len(self) if index < 0 else index
      filename = f"{self._split}_{position:06d}"
    else:
      filename = raw[ds.filename_key]
      if isinstance(filename, bytes):
        filename = filename.decode()
      # Pet names end in ".jpg"; Cityscapes ids have no extension.
      filename = os.path.splitext(os.path.basename(str(filename)))[0]
    mask = np.asarray(raw[ds.label_key])
    if mask.dtype != np.uint8 or mask.ndim not in (2, 3):
      raise ValueError(
          f"{ds.name} example {filename} ({self._split}[{index}]): "
          f"{ds.label_key!r} is {mask.dtype} {mask.shape}; expected a uint8 "
          "[H, W] or [H, W, C] mask, as tfds' Image feature decodes it.")
    if mask.ndim == 3:
      mask = mask[..., ds.label_channel]
    return {"image": np.asarray(raw[ds.image_key]),
            "label": self._table[mask][..., None],
            "filename": filename}


def data_source(name: str, split: str, *, data_dir=None,
                manual_dir=None) -> CatalogSource:
  """Random-access source of converted examples, preparing on first use.

  Args:
    name: catalog name, e.g. "oxford_iiit_pet".
    split: segjax split, optionally sliced as in tfds: "train[:10]",
      "validation[:50%]+train".
    data_dir: see `get_builder`.
    manual_dir: see `get_builder`.

  Returns:
    A CatalogSource (len(), __getitem__) of
    {"image": uint8 [H, W, C], "label": uint8 [H, W, 1], "filename": str}.

  Raises:
    ValueError: unknown dataset or split, a manual_dir problem, or data
      already prepared in a format without random access.
    ImportError: preparing is needed and TensorFlow is not installed.
  """
  dataset = get_dataset(name)
  translated = tfds_split(dataset, split)  # Bad split names fail before I/O.
  builder = get_builder(name, data_dir=data_dir, manual_dir=manual_dir)
  try:
    source = builder.as_data_source(split=translated)
  except NotImplementedError as e:
    raise ValueError(
        f"{dataset.tfds_name} is prepared under {builder.data_dir} in a format "
        f"without random access ({e}). Pass another {DATA_DIR_FLAG}, or "
        "delete that directory so segjax prepares it again as array_record."
    ) from e
  return CatalogSource(source, dataset, split)
