"""What the dataset registry (segjax.data.datasets) knows about a dataset, and what each builder module exports.

Each builder module of ours (shapes, isbi2012, camvid, lfw_parts, voc2012, ade20k) exports one `SPEC`, a
BuilderSpec; the catalog adapter (segjax.data.catalog) exports `SPECS`, one DatasetSpec per catalog dataset; the
folder dataset's spec comes from its config block (segjax.data.folder.dataset_spec). This module imports no
dataset module, so they and the registry can all import it.
"""

import dataclasses
from typing import Callable, Mapping


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


@dataclasses.dataclass(frozen=True)
class BuilderSpec:
  """A tfds builder of ours, as its module exports it (`SPEC`).

  Attributes:
    name: registry name, e.g. "camvid".
    builder: the tfds GeneratorBasedBuilder class; its `name` is the tfds name.
    class_names: one name per class id.
    palette: display RGB per class id.
    ignore_label: raw label id meaning "not labelled", or None.
    num_channels: image channels.
    splits: splits always present once prepared (others may be, see split_hints).
    check_manual_dir: takes the user's manual_dir, raises a ValueError naming the fix when its layout is wrong
      and returns it as a Path; run before tfds starts, so the error is segjax's. None: preparing needs no
      manual dir.
    split_hints: split -> why it may be missing from prepared data, appended to the unknown-split error.
  """
  name: str
  builder: type
  class_names: tuple[str, ...]
  palette: tuple[tuple[int, int, int], ...]
  ignore_label: int | None
  num_channels: int
  splits: tuple[str, ...]
  check_manual_dir: Callable | None = None
  split_hints: Mapping[str, str] = dataclasses.field(default_factory=dict)

  @property
  def dataset(self) -> DatasetSpec:
    """The registry's DatasetSpec of this builder."""
    return DatasetSpec(name=self.name, tfds_name=self.builder.name, class_names=self.class_names,
                       palette=self.palette, ignore_label=self.ignore_label, num_channels=self.num_channels,
                       splits=tuple(self.splits), needs_manual_dir=self.check_manual_dir is not None)
