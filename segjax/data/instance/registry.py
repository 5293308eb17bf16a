"""The instance datasets by name: prepared tfds builders (array_record), read without TensorFlow.

Three kinds, one interface (`get_builder`, `get_spec`, `data_source`):
  "instance_shapes"  generated overlapping shapes (segjax.data.instance.shapes), the instance quickstart's default;
                     needs nothing.
  "coco"             COCO-format data (segjax.data.instance.coco): options `splits`, a {split: (images_dir,
                     instances_json)} mapping, or `manual_dir` holding COCO 2017's layout; `name` (default "coco").
  "instance_folder"  images + instance-id mask PNGs (segjax.data.instance.id_masks, Penn-Fudan style): options
                     images_dir, masks_dir (or manual_dir holding images/ and masks/), and optionally class_names,
                     classes_dir, id_classes, ignore_id, split_fractions / split_files, name.

Every source yields the stored example of segjax.data.instance.features (image, image_id, filename, objects);
`pipeline.TrainTransform` / `pipeline.eval_example` turn it into batch fields. Class names (index 0 is
"background"), the COCO category ids and each split's largest instance count come from the prepared copy's
metadata, so `get_spec` needs no pass over the records.

Prepared data is cached under `data_dir` by builder name, version and (coco, instance_folder) a hash of the
options and source files' sizes and times: changed files prepare afresh.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Mapping

import tensorflow_datasets as tfds

from segjax.data.instance import shapes

SHAPES, COCO, FOLDER = "instance_shapes", "coco", "instance_folder"
NAMES = (SHAPES, COCO, FOLDER)
_NO_GCS = tfds.download.DownloadConfig(try_download_gcs=False)


@dataclasses.dataclass(frozen=True)
class InstanceSpec:
  """What a task needs to know about a prepared instance dataset.

  Attributes:
    name: registry name ("instance_shapes", "coco", "instance_folder").
    tfds_name: the tfds builder name (with its config, if any).
    class_names: "background" then the K object classes; class id c names class_names[c].
    palette: display RGB per class id.
    splits: the prepared splits.
    max_objects: split -> the largest instance count (crowd included) of any example: max_instances must reach
      it (the host transform raises otherwise).
    category_ids: COCO only: the category id of class c at index c (index 0: 0), to write results in COCO's ids;
      None for other datasets.
  """
  name: str
  tfds_name: str
  class_names: tuple[str, ...]
  palette: tuple[tuple[int, int, int], ...]
  splits: tuple[str, ...]
  max_objects: Mapping[str, int]
  category_ids: tuple[int, ...] | None = None

  @property
  def num_classes(self) -> int:
    """K + 1, background included (torchvision's `num_classes`)."""
    return len(self.class_names)

  @property
  def num_object_classes(self) -> int:
    """K."""
    return len(self.class_names) - 1

  @property
  def num_channels(self) -> int:
    """Instance images are RGB (what pretrained-weight normalisation and the shared checks ask)."""
    return 3


def _palette(num_classes: int) -> tuple[tuple[int, int, int], ...]:
  """Display colours: black background, then shapes' palette, then a golden-ratio hue walk."""
  import colorsys  # pylint: disable=import-outside-toplevel

  colours = list(shapes.PALETTE)
  i = 0
  while len(colours) < num_classes:
    r, g, b = colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.65, 0.95)
    colours.append((int(r * 255), int(g * 255), int(b * 255)))
    i += 1
  return tuple(colours[:num_classes])


def make_builder(name: str, /, *, data_dir=None, manual_dir=None, **options: Any) -> tfds.core.GeneratorBasedBuilder:
  """The (not necessarily prepared) tfds builder of a registry name; see the module doc for each name's options.

  Raises:
    ValueError: an unknown name, an option the dataset does not take, or a problem in the source files found
      before tfds starts (coco, instance_folder: naming the file and the fix).
  """
  data_dir = os.fspath(data_dir) if data_dir is not None else None
  if name == SHAPES:
    if options:
      raise ValueError(f"instance_shapes takes no options, got {sorted(options)}.")
    return shapes.SegjaxInstanceShapes(data_dir=data_dir, file_format="array_record")
  # Imported here: pycocotools and the folder code load only for the datasets that use them.
  if name == COCO:
    from segjax.data.instance import coco  # pylint: disable=import-outside-toplevel
    return coco.make_builder(data_dir=data_dir, manual_dir=manual_dir, **options)
  if name == FOLDER:
    from segjax.data.instance import id_masks  # pylint: disable=import-outside-toplevel
    return id_masks.make_builder(data_dir=data_dir, manual_dir=manual_dir, **options)
  raise ValueError(f"Unknown instance dataset {name!r}; known: {list(NAMES)}.")


def get_builder(name: str, /, *, data_dir=None, manual_dir=None, **options: Any) -> tfds.core.GeneratorBasedBuilder:
  """A prepared builder (array_record), preparing it on first use; arguments as `make_builder`.

  Every check of the source files runs before tfds writes anything, and tfds writes into a temporary folder a
  failure removes, so a failed preparation leaves nothing a later call would take as prepared.
  """
  return prepared(make_builder(name, data_dir=data_dir, manual_dir=manual_dir, **options))


def prepared(builder: tfds.core.GeneratorBasedBuilder) -> tfds.core.GeneratorBasedBuilder:
  """`builder`, prepared first if it is not (nothing is downloaded: the sources are local or generated)."""
  if not builder.is_prepared():
    builder.download_and_prepare(download_config=_NO_GCS)
  return builder


def spec_of(builder: tfds.core.DatasetBuilder, name: str) -> InstanceSpec:
  """The InstanceSpec of a prepared builder, from its saved metadata."""
  meta = builder.info.metadata or {}
  class_names = tuple(meta["class_names"])
  ids = meta.get("category_ids")
  return InstanceSpec(name=name, tfds_name=builder.info.full_name, class_names=class_names,
                      palette=_palette(len(class_names)), splits=tuple(builder.info.splits),
                      max_objects={k: int(v) for k, v in meta["max_objects"].items()},
                      category_ids=tuple(int(i) for i in ids) if ids is not None else None)


def get_spec(name: str, /, *, data_dir=None, manual_dir=None, **options: Any) -> InstanceSpec:
  """The InstanceSpec of a dataset, preparing it on first use; arguments as `make_builder`."""
  return spec_of(get_builder(name, data_dir=data_dir, manual_dir=manual_dir, **options), name)


def _split_names(split: str) -> list[str]:
  # "train[:25]+validation[10%:]" -> ["train", "validation"].
  return [re.sub(r"\[.*\]$", "", part.strip()).strip() for part in split.split("+")]


def data_source(name: str, split: str, /, *, data_dir=None, manual_dir=None, **options: Any):
  """Random-access source (len(), __getitem__) of stored examples of `split` (tfds slicing allowed), preparing
  the dataset on first use; arguments as `make_builder`.

  Raises:
    ValueError: an unknown split, or one that selects no example.
  """
  builder = get_builder(name, data_dir=data_dir, manual_dir=manual_dir, **options)
  return split_source(builder, split, f"instance dataset {name!r}")


def split_source(builder: tfds.core.DatasetBuilder, split: str, what: str):
  """The data source of `split` of a prepared builder; `what` names the dataset in errors.

  Raises:
    ValueError: an unknown split, or one that selects no example.
  """
  available = list(builder.info.splits)
  for base in _split_names(split):
    if base not in available:
      raise ValueError(f"Unknown split {base!r} (in {split!r}) of {what}; available splits: {available}.")
  if builder.info.splits[split].num_examples == 0:
    raise ValueError(f"Split {split!r} of {what} holds no examples: choose a split or a slice that selects some "
                     "(tfds slicing: 'train[:100]').")
  return builder.as_data_source(split=split)
