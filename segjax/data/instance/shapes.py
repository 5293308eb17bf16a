"""instance_shapes: a generated instance segmentation dataset that needs no download (the instance quickstart).

Each 128x128 RGB image holds 0-6 shapes of 5 classes (disk, square, triangle, ring, cross), several often of
the same class, overlapping: a later shape occludes the earlier ones, and every instance stores its VISIBLE mask.
Placement keeps at least half of each earlier shape visible, so occlusion is frequent but never hides an object
entirely; an instance left with fewer than MIN_PIXELS visible pixels is dropped all the same. About one image in
twenty has no object at all (a negative, as COCO has). Colours are uniform random for every shape and for the
background (which also gets a random linear gradient and Gaussian noise), so the shape, not the colour, tells
the class, and two touching instances of one class differ in colour.

As segjax.data.shapes (the semantic dataset) every example comes from a numpy Generator seeded by (split, index),
so the data do not depend on generation order, and only IEEE-exact operations (+, -, *, /, sqrt, comparisons)
touch the geometry (rotations from normalised random vectors rather than sin/cos, whose last bit may differ
between libm builds), so masks are identical on every machine. Boxes are the masks' tight boxes in the contract's
convention (features.mask_box).
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow_datasets as tfds

from segjax.data import png
from segjax.data.instance import features

CLASS_NAMES = ("background", "disk", "square", "triangle", "ring", "cross")
# Trubetskoy's palette, for display only (the data's colours are random).
PALETTE = ((0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48))
IMAGE_SIZE = 128
SPLIT_SIZES = {"train": 1000, "validation": 100, "test": 100}
MAX_OBJECTS = 6
MIN_PIXELS = 20  # fewer visible pixels than this: the instance is dropped
EMPTY_PROB = 0.05  # share of images without any object

# Part of every example's seed: changing it changes the dataset, so it also needs a new builder VERSION.
_SEED = 22022
# Fixed ids rather than hash(split): str hashes are salted per process.
_SPLIT_IDS = {"train": 0, "validation": 1, "test": 2}
# Each new shape keeps at least this share of every earlier one visible.
_MIN_VISIBLE = 0.5
_MAX_TRIES = 50
_MIN_CONTRAST = 80.0  # RGB distance between a shape's colour and the colours around it
_SQRT3_2 = math.sqrt(3.0) / 2.0
_YY, _XX = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float64)


def _unit_vector(rng: np.random.Generator) -> tuple[float, float]:
  """A uniformly oriented unit vector without trigonometric functions."""
  while True:
    x, y = rng.uniform(-1.0, 1.0, size=2)
    n2 = x * x + y * y
    if 0.01 < n2 <= 1.0:
      n = math.sqrt(n2)
      return float(x / n), float(y / n)


def _rotated(rng: np.random.Generator, cx: float, cy: float) -> tuple[np.ndarray, np.ndarray]:
  c, s = _unit_vector(rng)
  dx, dy = _XX - cx, _YY - cy
  return dx * c + dy * s, dy * c - dx * s


def _sample_shape(rng: np.random.Generator, cls: int) -> tuple[np.ndarray, tuple[float, float]]:
  """One shape of class `cls` (1..5): (bool mask [H, W], centre (x, y)), the whole shape inside the image."""
  scale = rng.uniform(8.0, 24.0)  # bounding radius, 16-48 px across
  if cls == 1:  # disk
    bound = scale
  elif cls == 2:  # square of half side h: its diagonal is the bound
    h = scale / math.sqrt(2.0)
    bound = scale
  elif cls == 3:  # equilateral triangle of circumradius `scale`
    bound = scale
  elif cls == 4:  # ring: band >= 3 px, hole >= 6 px across
    thickness = rng.uniform(3.0, 0.6 * scale)
    bound = scale
  elif cls == 5:  # plus sign of half span `scale`, arms >= 4 px wide
    arm = scale
    half_width = rng.uniform(2.0, max(2.0, arm / 3.0))
    bound = math.sqrt(arm * arm + half_width * half_width)
  else:
    raise ValueError(f"No shape for class {cls}.")
  lo, hi = bound, IMAGE_SIZE - 1 - bound
  cx, cy = rng.uniform(lo, hi), rng.uniform(lo, hi)
  if cls in (1, 4):
    d2 = (_XX - cx) ** 2 + (_YY - cy) ** 2
    mask = d2 <= bound * bound
    if cls == 4:
      r_in = bound - thickness
      mask &= d2 > r_in * r_in
  elif cls == 2:
    u, v = _rotated(rng, cx, cy)
    mask = (np.abs(u) <= h) & (np.abs(v) <= h)
  elif cls == 3:
    # Inside iff within the inradius (r / 2) along the three directions to the edge midpoints, 120 degrees apart.
    dx, dy = _XX - cx, _YY - cy
    c, s = _unit_vector(rng)
    mask = np.ones_like(dx, dtype=bool)
    for _ in range(3):
      mask &= dx * c + dy * s <= bound / 2.0
      c, s = -0.5 * c - _SQRT3_2 * s, _SQRT3_2 * c - 0.5 * s
  else:
    u, v = _rotated(rng, cx, cy)
    au, av = np.abs(u), np.abs(v)
    mask = ((au <= arm) & (av <= half_width)) | ((av <= arm) & (au <= half_width))
  return mask, (cx, cy)


def random_colour(rng: np.random.Generator, avoid: list[np.ndarray]) -> np.ndarray:
  """A uniform random RGB colour at least _MIN_CONTRAST from each of `avoid` (the last draw after many tries)."""
  for _ in range(_MAX_TRIES):
    colour = rng.uniform(0.0, 255.0, size=3)
    if all(np.sqrt(np.sum((colour - a) ** 2)) >= _MIN_CONTRAST for a in avoid):
      break
  return colour


def generate_example(split: str, index: int) -> dict[str, np.ndarray]:
  """One example, identical on every machine and in any order.

  Args:
    split: "train", "validation" or "test".
    index: example index within the split.

  Returns:
    {"image": uint8 [128, 128, 3], "masks": uint8 [n, 128, 128] visible 0/1 masks, "boxes": float32 [n, 4]
    their tight boxes, "classes": int32 [n] in 1..5}, n in 0..MAX_OBJECTS, instances in drawing order.
  """
  if split not in _SPLIT_IDS:
    raise ValueError(f"Unknown split {split!r}; available splits: {list(SPLIT_SIZES)}")
  rng = np.random.default_rng((_SEED, _SPLIT_IDS[split], index))
  base = rng.uniform(0.0, 255.0, size=3)
  gc, gs = _unit_vector(rng)
  slope = rng.uniform(-80.0, 80.0, size=3)
  centre = (IMAGE_SIZE - 1) / 2.0
  ramp = ((_XX - centre) * gc + (_YY - centre) * gs) / centre
  image = base + ramp[..., None] * slope

  count = 0 if rng.uniform() < EMPTY_PROB else int(rng.integers(1, MAX_OBJECTS + 1))
  visible, areas, classes, colours = [], [], [], []
  for _ in range(count):
    cls = int(rng.integers(1, len(CLASS_NAMES)))
    for _ in range(_MAX_TRIES):
      mask, (cx, cy) = _sample_shape(rng, cls)
      if all(np.sum(m & ~mask) >= _MIN_VISIBLE * a for m, a in zip(visible, areas)):
        break
    else:
      continue  # no room for this shape: leave it out
    local_bg = base + ramp[int(round(cy)), int(round(cx))] * slope
    colour = random_colour(rng, [local_bg] + colours)
    visible = [m & ~mask for m in visible] + [mask]
    areas.append(int(mask.sum()))
    classes.append(cls)
    colours.append(colour)
    image[mask] = colour
  sigma = rng.uniform(3.0, 10.0)
  image = np.clip(np.rint(image + sigma * rng.standard_normal(image.shape)), 0, 255).astype(np.uint8)

  keep = [i for i, m in enumerate(visible) if m.sum() >= MIN_PIXELS]
  masks = (np.stack([visible[i] for i in keep]).astype(np.uint8) if keep
           else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), np.uint8))
  return {"image": image, "masks": masks,
          "boxes": np.stack([features.mask_box(m) for m in masks]) if keep else np.zeros((0, 4), np.float32),
          "classes": np.asarray([classes[i] for i in keep], np.int32)}


class SegjaxInstanceShapes(tfds.core.GeneratorBasedBuilder):
  """Deterministic generated shapes with instance masks (5 classes, 128x128 RGB, 0-6 instances)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}

  def _info(self) -> tfds.core.DatasetInfo:
    return features.info(self, description=(
        "Generated shapes for instance segmentation: disk, square, triangle, ring and cross in random colours, "
        "overlapping (visible masks stored), on a random gradient background with Gaussian noise."))

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    self.info.metadata.update(class_names=list(CLASS_NAMES), max_objects={s: MAX_OBJECTS for s in SPLIT_SIZES})
    return {split: self._generate_examples(split, n) for split, n in SPLIT_SIZES.items()}

  def _generate_examples(self, split, num_examples):
    for index in range(num_examples):
      example = generate_example(split, index)
      yield index, {
          "image": png.encode(example["image"], compress_level=1),  # noisy pixels barely compress
          "image_id": index,
          "filename": f"{split}_{index:06d}",
          "objects": features.encode_objects(example["masks"], example["classes"],
                                             np.zeros(len(example["classes"]), bool), example["boxes"]),
      }
