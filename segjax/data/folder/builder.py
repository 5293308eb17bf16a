"""The folder dataset's tfds builder: `make_builder(params)` -> SegjaxFolder, and its registry spec.

Preparation reads every file before failing, and one error lists every bad file (up to files.MAX_LISTED); tfds
writes into a temporary folder that a failure removes, so nothing is left that a later run would take as
prepared. The tfds config name is `<name>-<hash8>`, the hash covering every parameter (paths resolved) and the
size and mtime of every source file.
"""

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
from segjax.data import spec
from segjax.data.folder.files import MAX_LISTED, assign_splits, list_examples
from segjax.data.folder.params import IGNORE_LABEL, NAME, FolderParams, check_params, params_from_config, spec_fields
from segjax.data.folder.read import binary_mask_error, read_example


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


def dataset_spec(dataset_config: ml_collections.ConfigDict) -> spec.DatasetSpec:
  """The registry's DatasetSpec of the folder dataset a `config.dataset` block describes.

  Raises:
    ValueError: a required key of `config.dataset.folder` left unset.
  """
  params = params_from_config(dataset_config.folder, dataset_config.get("reduce_zero_label", False))
  class_names, palette, ignore_label, num_channels, splits = spec_fields(params)
  return spec.DatasetSpec(name=NAME, tfds_name=SegjaxFolder.name, class_names=tuple(class_names),
                          palette=tuple(palette), ignore_label=ignore_label, num_channels=num_channels,
                          splits=tuple(splits), needs_manual_dir=False)
