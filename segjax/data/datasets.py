"""Dataset registry and access: prepared tfds builders, read without TensorFlow.

Three kinds of dataset, one interface (`get_spec`, `data_source`):
- builders of ours (shapes, isbi2012, camvid, lfw_parts, voc2012, ade20k), written as ArrayRecord files, so
  `data_source` gives random access (len(), __getitem__) to decoded examples without importing TensorFlow;
- "folder": the user's images and masks folders, configured by `config.dataset.folder` (segjax.data.folder);
- tfds catalog datasets (oxford_iiit_pet, cityscapes, scene_parse150) read through adapters that remap their
  labels (segjax.data.catalog); preparing those needs TensorFlow, reading does not.

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

FOLDER = "folder"


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
    reduce_zero_label: MMSegmentation's reduce_zero_label (`config.dataset.reduce_zero_label`): raw label 0 is
      ignored and raw c is class c - 1, so `class_names` lists the classes of raw ids 1..K.
  """
  name: str
  tfds_name: str
  class_names: tuple[str, ...]
  palette: tuple[tuple[int, int, int], ...]
  ignore_label: int | None
  num_channels: int
  splits: tuple[str, ...]
  needs_manual_dir: bool
  reduce_zero_label: bool = False

  @property
  def num_classes(self) -> int:
    return len(self.class_names)


# Builders of ours: registry name -> (module with CLASS_NAMES / PALETTE, builder class, ignore label, channels,
# splits always present once prepared, whether preparing needs a manual dir).
_OURS = {
    "shapes": (shapes, shapes.SegjaxShapes, None, 3, tuple(shapes.SPLIT_SIZES), False),
    "isbi2012": (isbi2012, isbi2012.Isbi2012Membrane, isbi2012.IGNORE_LABEL, 1, ("train", "test"), True),
    # A "test" split exists too when the manual dir has test/ + testannot/.
    "camvid": (camvid, camvid.Camvid, camvid.IGNORE_LABEL, 3, camvid.REQUIRED_SPLITS, True),
    "lfw_parts": (lfw_parts, lfw_parts.LfwParts, lfw_parts.IGNORE_LABEL, lfw_parts.NUM_CHANNELS,
                  tuple(lfw_parts.SPLIT_LISTS), True),
    # A "train_aug" split (SBD-augmented, 10582 images) exists too when the manual dir had it at prepare time.
    "voc2012": (voc2012, voc2012.Voc2012Segmentation, voc2012.IGNORE_LABEL, voc2012.NUM_CHANNELS,
                voc2012.REQUIRED_SPLITS, True),
    # The ADE20K SceneParsing benchmark (150 classes) from ADEChallengeData2016.zip; labels stored reduced
    # (0 "other" -> 255, c -> c - 1), as MMSegmentation's reduce_zero_label.
    "ade20k": (ade20k, ade20k.Ade20k, ade20k.IGNORE_LABEL, ade20k.NUM_CHANNELS, ade20k.SPLITS, True),
}

DATASETS: dict[str, DatasetSpec] = {
    **{name: DatasetSpec(name=name, tfds_name=builder.name, class_names=module.CLASS_NAMES,
                         palette=module.PALETTE, ignore_label=ignore, num_channels=channels, splits=splits,
                         needs_manual_dir=manual)
       for name, (module, builder, ignore, channels, splits, manual) in _OURS.items()},
    **{name: DatasetSpec(name=name, tfds_name=e.tfds_name, class_names=e.class_names, palette=e.palette,
                         ignore_label=e.ignore_label, num_channels=e.num_channels, splits=e.splits,
                         needs_manual_dir=e.needs_manual_dir)
       for name, e in catalog.CATALOG.items()},
}

_BUILDERS = {name: entry[1] for name, entry in _OURS.items()}

# Why a split may be missing from prepared data.
_SPLIT_HINTS = {
    ("camvid", "test"): (
        " CamVid has a test split only when the manual_dir held test/ and "
        "testannot/ at prepare time: add them, delete the prepared copy under "
        "data_dir and prepare again."),
    ("voc2012", voc2012.AUG_SPLIT): (
        f" VOC 2012 has a {voc2012.AUG_SPLIT} split only when the manual_dir held {voc2012.AUG_FOLDER}/ and its "
        "list at prepare time: add them, delete the prepared copy under data_dir and prepare again."),
}
_LAYOUT_CHECKS = {
    "isbi2012": isbi2012.check_manual_dir,
    "camvid": camvid.check_manual_dir,
    "lfw_parts": lfw_parts.check_manual_dir,
    "voc2012": voc2012.check_manual_dir,
    "ade20k": ade20k.check_manual_dir,
}


def known_names() -> list[str]:
  return sorted([*DATASETS, FOLDER])


def _folder_spec(dataset_config) -> DatasetSpec:
  params = folder.params_from_config(dataset_config.folder, dataset_config.get("reduce_zero_label", False))
  class_names, palette, ignore_label, num_channels, splits = folder.spec_fields(params)
  return DatasetSpec(name=FOLDER, tfds_name=folder.SegjaxFolder.name, class_names=tuple(class_names),
                     palette=tuple(palette), ignore_label=ignore_label, num_channels=num_channels,
                     splits=tuple(splits), needs_manual_dir=False)


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
    spec = _folder_spec(dataset)
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
          + _SPLIT_HINTS.get((name, base), ""))
  if builder.info.splits[split].num_examples == 0:
    sizes = ", ".join(f"{s} ({builder.info.splits[s].num_examples})" for s in available)
    raise ValueError(
        f"Split {split!r} of dataset {name!r} holds no examples: choose a split or a slice that selects some "
        f"(tfds slicing: 'train[:100]', 'train[10%:]'); available splits (examples): {sizes}.")
  return builder.as_data_source(split=split)
