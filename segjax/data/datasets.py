"""Dataset registry and access: prepared tfds builders, read without TensorFlow.

Three kinds of dataset, one interface (`get_spec`, `data_source`):
- builders of ours (shapes, isbi2012, camvid, lfw_parts, voc2012, ade20k), written as ArrayRecord files, so
  `data_source` gives random access (len(), __getitem__) to decoded examples without importing TensorFlow;
- "folder": the user's images and masks folders, configured by `config.dataset.folder` (segjax.data.folder);
- tfds catalog datasets (oxford_iiit_pet, cityscapes, scene_parse150) read through adapters that remap their
  labels (segjax.data.catalog); preparing those needs TensorFlow, reading does not.

The registry holds no per-dataset data of its own: each builder module exports a `SPEC` (a spec.BuilderSpec:
builder class, classes, splits, manual-dir check, split hints), the catalog adapter its `SPECS`, and
the folder dataset's spec comes from its config block (`folder.dataset_spec`).

Every source yields examples

  image:    uint8 [H, W, C]
  label:    uint8 [H, W, 1] raw class ids (a dataset's ignore id included)
  filename: bytes or str, the source file stem ("train_000017" for generated data)

Prepared data is cached under `data_dir` by builder name and version: a later
call reuses it and ignores `manual_dir`. Delete `<data_dir>/<tfds_name>` to
prepare again from other files.
"""

import dataclasses
import os
import re
from typing import Any

import tensorflow_datasets as tfds

from segjax.data import ade20k
from segjax.data import camvid
from segjax.data import catalog
from segjax.data import folder
from segjax.data import isbi2012
from segjax.data import lfw_parts
from segjax.data import png
from segjax.data import shapes
from segjax.data import voc2012
from segjax.data.spec import BuilderSpec, DatasetSpec  # DatasetSpec: callers read it as datasets.DatasetSpec

FOLDER = folder.NAME

# Builders of ours: registry name -> the SPEC their module exports.
_OURS: dict[str, BuilderSpec] = {m.SPEC.name: m.SPEC for m in (shapes, isbi2012, camvid, lfw_parts, voc2012, ade20k)}

DATASETS: dict[str, DatasetSpec] = {
    **{name: ours.dataset for name, ours in _OURS.items()},
    **catalog.SPECS,
}


def known_names() -> list[str]:
  return sorted([*DATASETS, FOLDER])


def get_spec(dataset) -> DatasetSpec:
  """Returns the spec of a dataset.

  Args:
    dataset: a registry name, or a `config.dataset` block (needed for "folder", whose classes, palette and
      splits come from `config.dataset.folder`).

  Returns:
    The DatasetSpec.

  Raises:
    ValueError: for an unknown name, listing the known ones.
  """
  name = dataset if isinstance(dataset, str) else dataset.name
  if name == FOLDER:
    if isinstance(dataset, str):
      raise ValueError("The folder dataset is defined by config.dataset.folder: pass the config.dataset block "
                       "to get_spec / data_source instead of the name.")
    spec = folder.dataset_spec(dataset)
  else:
    try:
      spec = DATASETS[name]
    except KeyError:
      raise ValueError(
          f"Unknown dataset {name!r}; known datasets: {known_names()}."
      ) from None
  if isinstance(dataset, str) or not dataset.get("reduce_zero_label", False):
    return spec
  if name != FOLDER:
    # Only the folder dataset passes raw ADE20K-style masks through; every registered dataset's class list
    # already names its stored ids, so shifting them would mislabel every class.
    why = ("ade20k is stored reduced already (raw 0 'other' -> 255, c -> c - 1, as MMSegmentation's "
           "reduce_zero_label)" if name == "ade20k" else
           f"{name}'s stored ids already match its class list ({spec.class_names[0]!r} is id 0)")
    raise ValueError(f"config.dataset.reduce_zero_label=True with dataset {name!r}: {why}. Set "
                     "--config.dataset.reduce_zero_label=False; it is for the folder dataset, whose raw masks "
                     "use 0 for 'other' and 1..K for the K classes listed in config.dataset.folder.class_names.")
  return dataclasses.replace(spec, reduce_zero_label=True)


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
  if name in catalog.CATALOG:
    return catalog.get_builder(name, data_dir=data_dir, manual_dir=manual_dir)
  get_spec(name)  # an unknown name fails here, listing the known ones
  ours = _OURS[name]
  builder = ours.builder(
      data_dir=os.fspath(data_dir) if data_dir is not None else None,
      file_format="array_record")
  if builder.is_prepared():
    return builder
  if ours.check_manual_dir is not None:
    # Check before tfds starts, so the error names segjax's fix.
    manual_dir = ours.check_manual_dir(manual_dir)
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


def data_source(dataset, split: str, *, data_dir=None,
                manual_dir=None) -> Any:
  """Random-access source of decoded examples, preparing the dataset on first use.

  Args:
    dataset: a registry name, or a `config.dataset` block (then data_dir, manual_dir and, for "folder", the
      folder parameters come from it).
    split: a split, optionally with tfds slicing, e.g. "train[:25]".
    data_dir: see `get_builder`.
    manual_dir: see `get_builder`.

  Returns:
    A sequence (len(), __getitem__) of example dicts, see the module doc.

  Raises:
    ValueError: unknown dataset or split, or a manual_dir problem.
    ImportError: a catalog dataset that must be prepared without TensorFlow installed.
  """
  if not isinstance(dataset, str):
    data_dir, manual_dir = dataset.data_dir, dataset.manual_dir
  # Preparation opens the source images with PIL: its pixel limit is the config's.
  with png.pixel_limit(None if isinstance(dataset, str) else dataset.get("max_image_pixels")):
    return _data_source(dataset, split, data_dir=data_dir, manual_dir=manual_dir)


def _data_source(dataset, split: str, *, data_dir, manual_dir) -> Any:
  name = dataset if isinstance(dataset, str) else dataset.name
  if name in catalog.CATALOG:
    return catalog.data_source(name, split, data_dir=data_dir, manual_dir=manual_dir)
  if name == FOLDER:
    get_spec(dataset)  # the folder dataset needs its config block
    builder = folder.make_builder(folder.params_from_config(dataset.folder, dataset.reduce_zero_label),
                                  name=dataset.folder.name,
                                  data_dir=data_dir)
    if not builder.is_prepared():
      builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  else:
    builder = get_builder(name, data_dir=data_dir, manual_dir=manual_dir)
  available = list(builder.info.splits)
  for base in _split_names(split):
    if base not in available:
      raise ValueError(
          f"Unknown split {base!r} (in {split!r}) for dataset {name!r}; "
          f"available splits: {available}."
          + (_OURS[name].split_hints.get(base, "") if name in _OURS else ""))
  if builder.info.splits[split].num_examples == 0:
    sizes = ", ".join(f"{s} ({builder.info.splits[s].num_examples})" for s in available)
    raise ValueError(
        f"Split {split!r} of dataset {name!r} holds no examples: choose a split or a slice that selects some "
        f"(tfds slicing: 'train[:100]', 'train[10%:]'); available splits (examples): {sizes}.")
  return builder.as_data_source(split=split)
