"""The panoptic datasets by name: prepared tfds builders (array_record), read without TensorFlow.

Three kinds, one interface (`get_builder`, `get_spec`, `data_source`), as segjax.data.instance.registry:
  "panoptic_shapes"  generated shapes on textured stuff regions (segjax.data.panoptic.shapes), the panoptic
                     quickstart's default; needs nothing.
  "coco_panoptic"    COCO panoptic format (segjax.data.panoptic.coco): segment-id PNGs + a JSON of
                     segments_info per split; options `splits`, a {split: (images_dir, panoptic_json,
                     panoptic_dir)} mapping, or `manual_dir` in COCO 2017's layout; `name`.
  "cityscapes"       Cityscapes-style instance-id maps (segjax.data.panoptic.cityscapes): options `splits` /
                     `manual_dir` (leftImg8bit/ + gtFine/), `name`.

Every source yields the stored example of segjax.data.panoptic.features; segjax.data.panoptic.pipeline turns it
into batch fields.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

import tensorflow_datasets as tfds

from segjax.data.instance import registry as instance_registry

SHAPES, COCO, CITYSCAPES = "panoptic_shapes", "coco_panoptic", "cityscapes"
NAMES = (SHAPES, COCO, CITYSCAPES)
IGNORE = 255  # the semantic target's ignore label (Detectron2's SEM_SEG_HEAD.IGNORE_VALUE)


@dataclasses.dataclass(frozen=True)
class Category:
  id: int
  name: str
  isthing: bool


@dataclasses.dataclass(frozen=True)
class PanopticSpec:
  """What a task needs to know about a prepared panoptic dataset.

  Two contiguous numberings come from the categories (ascending id):
  - things: class c in 1..K is category `thing_ids[c - 1]` (the Mask R-CNN heads' classes; 0 background);
  - semantic: class 0 is "things" (any object, Panoptic FPN's semantic head), class s in 1..S is stuff category
    `stuff_ids[s - 1]`; IGNORE (255) marks void pixels.

  Attributes:
    name: registry name.
    tfds_name: the tfds builder name (with its config, if any).
    categories: every category, ascending id.
    splits: the prepared splits.
    max_objects: split -> the largest number of thing segments (crowd included) in one image.
  """
  name: str
  tfds_name: str
  categories: tuple[Category, ...]
  splits: tuple[str, ...]
  max_objects: Mapping[str, int]

  @property
  def thing_ids(self) -> tuple[int, ...]:
    return tuple(c.id for c in self.categories if c.isthing)

  @property
  def stuff_ids(self) -> tuple[int, ...]:
    return tuple(c.id for c in self.categories if not c.isthing)

  @property
  def class_names(self) -> tuple[str, ...]:
    """"background" then the thing classes (what the instance heads and InstanceSpec's users read)."""
    return ("background",) + tuple(c.name for c in self.categories if c.isthing)

  @property
  def semantic_names(self) -> tuple[str, ...]:
    return ("things",) + tuple(c.name for c in self.categories if not c.isthing)

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def num_object_classes(self) -> int:
    return len(self.class_names) - 1

  @property
  def num_semantic_classes(self) -> int:
    return len(self.semantic_names)

  @property
  def num_channels(self) -> int:
    return 3

  @property
  def category_ids(self) -> tuple[int, ...]:
    """Class c of the instance heads is category category_ids[c] (index 0: 0), as InstanceSpec's."""
    return (0,) + self.thing_ids

  @property
  def palette(self) -> tuple[tuple[int, int, int], ...]:
    """Display colours of the instance classes (background first)."""
    return instance_registry._palette(self.num_classes)  # pylint: disable=protected-access

  @property
  def categories_by_id(self) -> dict[int, dict[str, Any]]:
    """{category id: {"name", "isthing"}}, what segjax.evaluation.panoptic_quality takes."""
    return {c.id: {"name": c.name, "isthing": c.isthing} for c in self.categories}

  @property
  def category_colours(self) -> dict[int, tuple[int, int, int]]:
    """A display colour per category id (a golden-ratio hue walk in id order)."""
    colours = instance_registry._palette(len(self.categories) + 1)[1:]  # pylint: disable=protected-access
    return {c.id: colours[i] for i, c in enumerate(self.categories)}


def make_builder(name: str, /, *, data_dir=None, manual_dir=None, **options: Any) -> tfds.core.GeneratorBasedBuilder:
  """The (not necessarily prepared) tfds builder of a registry name; see the module doc for each name's options.

  Raises:
    ValueError: an unknown name, an option the dataset does not take, or a problem in the source files found
      before tfds starts (naming the file and the fix).
  """
  data_dir = os.fspath(data_dir) if data_dir is not None else None
  if name == SHAPES:
    if options:
      raise ValueError(f"panoptic_shapes takes no options, got {sorted(options)}.")
    from segjax.data.panoptic import shapes  # pylint: disable=import-outside-toplevel
    return shapes.SegjaxPanopticShapes(data_dir=data_dir, file_format="array_record")
  if name == COCO:
    from segjax.data.panoptic import coco  # pylint: disable=import-outside-toplevel
    return coco.make_builder(data_dir=data_dir, manual_dir=manual_dir, **options)
  if name == CITYSCAPES:
    from segjax.data.panoptic import cityscapes  # pylint: disable=import-outside-toplevel
    return cityscapes.make_builder(data_dir=data_dir, manual_dir=manual_dir, **options)
  raise ValueError(f"Unknown panoptic dataset {name!r}; known: {list(NAMES)}.")


def get_builder(name: str, /, *, data_dir=None, manual_dir=None, **options: Any) -> tfds.core.GeneratorBasedBuilder:
  """A prepared builder (array_record), preparing it on first use; arguments as `make_builder`. A failed
  preparation leaves nothing prepared (every check runs first; tfds writes into a temporary folder)."""
  return instance_registry.prepared(make_builder(name, data_dir=data_dir, manual_dir=manual_dir, **options))


def spec_of(builder: tfds.core.DatasetBuilder, name: str) -> PanopticSpec:
  """The PanopticSpec of a prepared builder, from its saved metadata."""
  meta = builder.info.metadata or {}
  cats = tuple(Category(int(c["id"]), str(c["name"]), bool(c["isthing"])) for c in meta["categories"])
  return PanopticSpec(name=name, tfds_name=builder.info.full_name, categories=tuple(sorted(cats, key=lambda c: c.id)),
                      splits=tuple(builder.info.splits),
                      max_objects={k: int(v) for k, v in meta["max_objects"].items()})


def get_spec(name: str, /, *, data_dir=None, manual_dir=None, **options: Any) -> PanopticSpec:
  """The PanopticSpec of a dataset, preparing it on first use; arguments as `make_builder`."""
  return spec_of(get_builder(name, data_dir=data_dir, manual_dir=manual_dir, **options), name)


def data_source(name: str, split: str, /, *, data_dir=None, manual_dir=None, **options: Any):
  """Random-access source of stored examples of `split` (tfds slicing allowed), preparing on first use.

  Raises:
    ValueError: an unknown split, or one that selects no example.
  """
  builder = get_builder(name, data_dir=data_dir, manual_dir=manual_dir, **options)
  return instance_registry.split_source(builder, split, f"panoptic dataset {name!r}")
