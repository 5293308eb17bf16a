"""panoptic_shapes: a generated panoptic segmentation dataset that needs no download (the panoptic quickstart).

Every example is instance_shapes' example of the same (split, index) (segjax.data.instance.shapes.generate_example,
called, not copied) with its background replaced by 2-3 "stuff" regions, so the things are exactly that
dataset's visible masks and every other pixel belongs to a stuff region. A horizon, the line y = a*x + b, splits
the image into an upper and a lower part: the lower part is ground; the upper part is sky or wall (2 regions), or,
in half the images, is split again by a near-vertical line x = c*y + d into sky on one side and wall on the other
(3 regions). Each stuff class has its own texture, its colours drawn at random (at least instance_shapes' minimum
contrast in RGB from the things' colours and from each other), so the texture, not the colour, tells the class:
  sky     a smooth vertical gradient
  ground  two-tone stripes parallel to the horizon
  wall    bricks (rows of bricks, every other row shifted by half a brick, lighter or darker mortar lines)
plus Gaussian noise, as the things have. Thing pixels keep instance_shapes' image exactly.

Categories (ids as COCO panoptic's category_id; 0 is void and never a segment's category):
  id  name      isthing
  1   disk      yes
  2   square    yes
  3   triangle  yes
  4   ring      yes
  5   cross     yes
  6   sky       no
  7   ground    no
  8   wall      no

Void (segment id 0): only the pixels of a stuff region that things leave with fewer than MIN_PIXELS visible
pixels (a sliver, as instance_shapes drops a thing with fewer visible pixels); most images have none.

Stored as every panoptic dataset (segjax.data.panoptic.features: COCO panoptic's layout, the segment-id map as an
RGB PNG): segment ids 0 void, 1..n the segments (things first, in instance_shapes' order, then stuff in category
order); iscrowd always False; image_id the example index; filename "train_000017". The metadata's `categories` are
the table above; `max_objects` is instance_shapes' MAX_OBJECTS for every split.

As instance_shapes, each example comes from numpy Generators seeded by (split, index) (this module's own seed for
the stuff, so the things are untouched), and only IEEE-exact operations (+, -, *, /, floor, comparisons) and
integer arithmetic place the boundaries and textures, so the maps are identical on every machine.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from segjax.data.instance import shapes
from segjax.data.panoptic import features

THING_NAMES = shapes.CLASS_NAMES[1:]
STUFF_NAMES = ("sky", "ground", "wall")
CLASS_NAMES = ("void",) + THING_NAMES + STUFF_NAMES  # index = category id
ISTHING = (False,) + (True,) * len(THING_NAMES) + (False,) * len(STUFF_NAMES)
CATEGORIES = tuple({"id": i, "name": n, "isthing": t} for i, (n, t) in enumerate(zip(CLASS_NAMES, ISTHING)) if i)
SKY, GROUND, WALL = 6, 7, 8
IMAGE_SIZE = shapes.IMAGE_SIZE
SPLIT_SIZES = dict(shapes.SPLIT_SIZES)
MIN_PIXELS = shapes.MIN_PIXELS  # a stuff region with fewer visible pixels becomes void

# Part of every example's seed: changing it changes the dataset, so it also needs a new builder VERSION.
_SEED = 24044
_SPLIT_IDS = {"train": 0, "validation": 1, "test": 2}
_CENTRE = (IMAGE_SIZE - 1) / 2.0
_YY, _XX = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float64)
_YI, _XI = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE]


def _shade(colour: np.ndarray, amount: float) -> np.ndarray:
  """`colour` moved by `amount` per channel, towards the middle of the range (a second tone of one texture)."""
  return np.where(colour > 127.5, colour - amount, colour + amount)


def stuff_layout(rng: np.random.Generator) -> np.ndarray:
  """int [H, W] stuff category (SKY, GROUND, WALL) of every pixel: 2 or 3 regions, each class at most once."""
  a = rng.uniform(-0.5, 0.5)
  b = rng.uniform(36.0, 92.0) - a * _CENTRE  # the horizon crosses the middle column between rows 36 and 92
  upper = _YY < a * _XX + b
  layout = np.full((IMAGE_SIZE, IMAGE_SIZE), GROUND, np.int32)
  if rng.uniform() < 0.5:  # 2 regions: sky or wall above ground
    layout[upper] = SKY if rng.uniform() < 0.5 else WALL
  else:  # 3 regions: the upper part split by a near-vertical line
    c = rng.uniform(-0.3, 0.3)
    d = rng.uniform(32.0, 96.0) - c * _CENTRE
    left = _XX < c * _YY + d
    wall_left = rng.uniform() < 0.5
    layout[upper] = SKY
    layout[upper & (left == wall_left)] = WALL
  return layout


def _texture(rng: np.random.Generator, layout: np.ndarray, avoid: list[np.ndarray]) -> np.ndarray:
  """float [H, W, 3] stuff image: each class present in `layout` painted with its texture (see the module doc)."""
  image = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3))
  avoid = list(avoid)
  for cls in (SKY, GROUND, WALL):
    where = layout == cls
    if not where.any():
      continue
    colour = shapes.random_colour(rng, avoid)
    avoid.append(colour)
    if cls == SKY:
      slope = rng.uniform(-40.0, 40.0, size=3)
      paint = colour + ((_YY - _CENTRE) / _CENTRE)[..., None] * slope
    elif cls == GROUND:
      width = rng.uniform(3.0, 10.0)
      slope = rng.uniform(-0.5, 0.5)
      band = np.floor((_YY - slope * _XX) / width).astype(np.int64) % 2 == 1
      paint = np.where(band[..., None], _shade(colour, 45.0), colour)
    else:
      height = int(rng.integers(6, 13))
      length = 2 * height + int(rng.integers(0, height))
      offset = int(rng.integers(0, length))
      row = _YI // height
      mortar = (_YI % height == 0) | ((_XI + offset + (row % 2) * (length // 2)) % length == 0)
      paint = np.where(mortar[..., None], _shade(colour, 60.0), colour)
    image[where] = np.broadcast_to(paint, image.shape)[where]
  return image


def generate_example(split: str, index: int) -> dict[str, Any]:
  """One example, identical on every machine and in any order.

  Args:
    split: "train", "validation" or "test".
    index: example index within the split.

  Returns:
    {"image": uint8 [128, 128, 3], "panoptic": uint8 [128, 128] segment ids (0 void), "segments": a list of
    {"id", "category_id", "isthing", "iscrowd", "area"} (python ints and bools), things first (in
    instance_shapes' order, ids 1..n), then stuff in category order}.
  """
  if split not in _SPLIT_IDS:
    raise ValueError(f"Unknown split {split!r}; available splits: {list(SPLIT_SIZES)}")
  things = shapes.generate_example(split, index)
  rng = np.random.default_rng((_SEED, _SPLIT_IDS[split], index))
  masks = things["masks"].astype(bool)
  covered = masks.any(axis=0)
  thing_colours = [np.median(things["image"][m].astype(np.float64), axis=0) for m in masks]
  layout = stuff_layout(rng)
  stuff = _texture(rng, layout, thing_colours)
  sigma = rng.uniform(3.0, 10.0)
  stuff = np.clip(np.rint(stuff + sigma * rng.standard_normal(stuff.shape)), 0, 255).astype(np.uint8)
  image = np.where(covered[..., None], things["image"], stuff)

  panoptic = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.uint8)
  segments = []
  for m, cls in zip(masks, things["classes"]):
    sid = len(segments) + 1
    panoptic[m] = sid
    segments.append({"id": sid, "category_id": int(cls), "isthing": True, "iscrowd": False, "area": int(m.sum())})
  for cls in (SKY, GROUND, WALL):
    region = (layout == cls) & ~covered
    area = int(region.sum())
    if area < MIN_PIXELS:
      continue  # absent, or a sliver: void
    sid = len(segments) + 1
    panoptic[region] = sid
    segments.append({"id": sid, "category_id": cls, "isthing": False, "iscrowd": False, "area": area})
  return {"image": image, "panoptic": panoptic, "segments": segments}


class SegjaxPanopticShapes(tfds.core.GeneratorBasedBuilder):
  """Deterministic generated shapes (5 thing classes) on 2-3 textured stuff regions (3 stuff classes), 128x128."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  SPLIT_SIZES = SPLIT_SIZES  # a subclass may prepare fewer examples (the tests do)

  def _info(self) -> tfds.core.DatasetInfo:
    return features.info(
        self, description=("Generated panoptic shapes: instance_shapes' disks, squares, triangles, rings and crosses "
                     "(things) on sky, ground and wall regions (stuff) split by straight boundaries."))

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    features.set_metadata(self, CATEGORIES, {split: shapes.MAX_OBJECTS for split in self.SPLIT_SIZES})
    return {split: self._generate_examples(split, n) for split, n in self.SPLIT_SIZES.items()}

  def _generate_examples(self, split, num_examples):
    for index in range(num_examples):
      example = generate_example(split, index)
      yield index, features.encode(example["image"], example["panoptic"], example["segments"], index,
                                   f"{split}_{index:06d}")


def get_builder(data_dir=None, builder_class: type[SegjaxPanopticShapes] = SegjaxPanopticShapes):
  """The prepared builder (array_record under `data_dir`), preparing it on first use (seconds)."""
  builder = builder_class(data_dir=None if data_dir is None else str(data_dir), file_format="array_record")
  if not builder.is_prepared():
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return builder
