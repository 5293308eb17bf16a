"""Synthetic shapes: a built-in segmentation dataset that needs no download.

Each 64x64 RGB image holds 2-4 shapes (disk, square, triangle, ring, cross) on
a background. Colours are uniform random for every shape and for the
background (which also gets a random linear gradient), so only the shape tells
the class apart. Later shapes occlude earlier ones and the label map shows the
visible shape. Labels and pixels agree exactly: no anti-aliasing.

Every example is generated from a numpy Generator seeded by (split, index), so
the dataset is independent of generation order. Only IEEE-exact operations
(+, -, *, /, sqrt, comparisons) touch the geometry: rotations come from
normalised random vectors rather than sin/cos, whose last bit may differ
between libm builds and would flip boundary pixels on other machines.
"""

import math

import numpy as np
import tensorflow_datasets as tfds

from segjax.data import png
from segjax.data import spec

CLASS_NAMES = ("background", "disk", "square", "triangle", "ring", "cross")
# Distinct display colours (Trubetskoy's palette); not used to draw the data.
PALETTE = (
    (0, 0, 0),
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
)
IMAGE_SIZE = 64
SPLIT_SIZES = {"train": 2000, "validation": 200, "test": 200}

# Part of every example's seed: changing it changes the whole dataset, so a
# change also needs a new builder VERSION.
_SEED = 20120
# Fixed ids rather than hash(split): str hashes are salted per process.
_SPLIT_IDS = {"train": 0, "validation": 1, "test": 2}
_MIN_SHAPES, _MAX_SHAPES = 2, 4
# Each shape placed keeps at least this share of every earlier shape visible,
# so heavy occlusion cannot turn, say, a disk into an unrecognisable sliver.
_MIN_VISIBLE = 0.6
_MAX_TRIES = 50
# Minimum RGB distance between a shape's colour and the colours around it.
_MIN_CONTRAST = 80.0
_SQRT3_2 = math.sqrt(3.0) / 2.0

# Pixel indices used as coordinates; float64 so the tests below are exact.
_YY, _XX = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float64)


def _unit_vector(rng: np.random.Generator) -> tuple[float, float]:
  """A uniformly oriented unit vector without trigonometric functions."""
  while True:
    x, y = rng.uniform(-1.0, 1.0, size=2)
    n2 = x * x + y * y
    if 0.01 < n2 <= 1.0:
      n = math.sqrt(n2)
      return float(x / n), float(y / n)


def _rotated_coords(rng, cx, cy):
  """Pixel coordinates in a randomly rotated frame centred on (cx, cy)."""
  c, s = _unit_vector(rng)
  dx, dy = _XX - cx, _YY - cy
  return dx * c + dy * s, dy * c - dx * s


def _sample_shape(rng: np.random.Generator, cls: int):
  """Samples one shape of class `cls`.

  Args:
    rng: the example's generator.
    cls: class id in 1..5.

  Returns:
    (mask, centre) where mask is a bool [H, W] array and centre the (x, y)
    of the shape.
  """
  # Bounding radius first, so the whole shape stays inside the image.
  if cls == 1:  # disk, 12-28 px across
    r = rng.uniform(6.0, 14.0)
    bound = r
  elif cls == 2:  # square, side 10-20 px (diagonal up to 28 px)
    h = rng.uniform(5.0, 10.0)
    bound = h * math.sqrt(2.0)
  elif cls == 3:  # equilateral triangle, side about 14-26 px
    r = rng.uniform(8.0, 15.0)  # circumradius
    bound = r
  elif cls == 4:  # ring, 16-28 px across, band >= 3 px, hole >= 6 px across
    r = rng.uniform(8.0, 14.0)
    thickness = rng.uniform(3.0, r - 4.0)
    bound = r
  elif cls == 5:  # plus sign, 16-28 px across, arms >= 3.5 px wide
    arm = rng.uniform(8.0, 14.0)  # half span
    half_width = rng.uniform(1.75, max(1.75, arm / 3.0))
    bound = math.sqrt(arm * arm + half_width * half_width)
  else:
    raise ValueError(f"No shape for class {cls}.")
  lo, hi = bound, IMAGE_SIZE - 1 - bound
  cx, cy = rng.uniform(lo, hi), rng.uniform(lo, hi)

  if cls in (1, 4):
    d2 = (_XX - cx) ** 2 + (_YY - cy) ** 2
    mask = d2 <= r * r
    if cls == 4:
      r_in = r - thickness
      mask &= d2 > r_in * r_in
  elif cls == 2:
    u, v = _rotated_coords(rng, cx, cy)
    mask = (np.abs(u) <= h) & (np.abs(v) <= h)
  elif cls == 3:
    # Inside iff within the inradius (r / 2) along the three directions that
    # point from the centre to the edge midpoints, 120 degrees apart.
    dx, dy = _XX - cx, _YY - cy
    c, s = _unit_vector(rng)
    mask = np.ones_like(dx, dtype=bool)
    for _ in range(3):
      mask &= dx * c + dy * s <= r / 2.0
      c, s = -0.5 * c - _SQRT3_2 * s, _SQRT3_2 * c - 0.5 * s
  else:
    u, v = _rotated_coords(rng, cx, cy)
    au, av = np.abs(u), np.abs(v)
    mask = ((au <= arm) & (av <= half_width)) | (
        (av <= arm) & (au <= half_width))
  return mask, (cx, cy)


def _random_colour(rng, avoid, min_distance=_MIN_CONTRAST):
  """A uniform random RGB colour at least `min_distance` from all of `avoid`."""
  for _ in range(_MAX_TRIES):
    colour = rng.uniform(0.0, 255.0, size=3)
    if all(np.sqrt(np.sum((colour - a) ** 2)) >= min_distance for a in avoid):
      return colour
  return colour  # Rare (many colours to avoid): accept the last draw.


def generate_example(split: str, index: int) -> dict[str, np.ndarray]:
  """Generates one example, identical on every machine and in any order.

  Args:
    split: "train", "validation" or "test".
    index: example index within the split.

  Returns:
    {"image": uint8 [64, 64, 3], "label": uint8 [64, 64, 1]}.
  """
  if split not in _SPLIT_IDS:
    raise ValueError(
        f"Unknown split {split!r}; available splits: {list(SPLIT_SIZES)}")
  rng = np.random.default_rng((_SEED, _SPLIT_IDS[split], index))

  # Background: a random colour plus a random linear gradient of up to +-80
  # per channel, so no global colour threshold isolates it.
  base = rng.uniform(0.0, 255.0, size=3)
  gc, gs = _unit_vector(rng)
  slope = rng.uniform(-80.0, 80.0, size=3)
  centre = (IMAGE_SIZE - 1) / 2.0
  ramp = ((_XX - centre) * gc + (_YY - centre) * gs) / centre
  image = base + ramp[..., None] * slope
  label = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.uint8)

  masks = []  # (mask, full area) of shapes already placed
  colours = []
  for _ in range(rng.integers(_MIN_SHAPES, _MAX_SHAPES + 1)):
    cls = int(rng.integers(1, len(CLASS_NAMES)))
    for _ in range(_MAX_TRIES):
      mask, (cx, cy) = _sample_shape(rng, cls)
      if all(np.sum(m & ~mask) >= _MIN_VISIBLE * area for m, area in masks):
        break
    else:
      continue  # No room for this shape: leave it out.
    local_bg = base + ramp[int(round(cy)), int(round(cx))] * slope
    colour = _random_colour(rng, [local_bg] + colours)
    for i, (m, area) in enumerate(masks):
      masks[i] = (m & ~mask, area)
    masks.append((mask, int(mask.sum())))
    colours.append(colour)
    image[mask] = colour
    label[mask] = cls

  sigma = rng.uniform(3.0, 12.0)
  image = image + sigma * rng.standard_normal(image.shape)
  image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
  return {"image": image, "label": label[..., None]}


class SegjaxShapes(tfds.core.GeneratorBasedBuilder):
  """Deterministic synthetic shapes (6 classes, 64x64 RGB)."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "First release.", "1.1.0": "Larger shapes (12-28 px), 2-4 per image."}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=(
            "Synthetic shapes for segmentation: background, disk, square, "
            "triangle, ring and cross in random colours on a random gradient "
            "background with Gaussian noise. Shape, not colour, decides the "
            "class."),
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(
                shape=(IMAGE_SIZE, IMAGE_SIZE, 3), encoding_format="png"),
            "label": tfds.features.Image(
                shape=(IMAGE_SIZE, IMAGE_SIZE, 1), encoding_format="png"),
            "filename": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
        # Keep examples in index order: record i is example i.
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    return {split: self._generate_examples(split, n)
            for split, n in SPLIT_SIZES.items()}

  def _generate_examples(self, split, num_examples):
    for index in range(num_examples):
      example = generate_example(split, index)
      yield index, {
          # Noisy pixels barely compress: the fastest level is nearly as small.
          "image": png.encode(example["image"], compress_level=1),
          "label": png.encode(example["label"][..., 0], compress_level=1),
          "filename": f"{split}_{index:06d}",
      }


SPEC = spec.BuilderSpec(name="shapes", builder=SegjaxShapes, class_names=CLASS_NAMES, palette=PALETTE,
                        ignore_label=None, num_channels=3, splits=tuple(SPLIT_SIZES))
