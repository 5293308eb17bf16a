"""Device-side joint augmentation of (image, label, weight) batches: jitted, one key per example.

The host decodes and crops; everything random happens here, inside the jitted train step, on the batch shard
each device already holds. Every op draws from its own key, `fold_in(example_key, op_id)`, so enabling one op
never changes the draws of another, and the result depends only on (seed, step, example position).

Geometric ops (zoom+crop, flips, rotation, affine, elastic) compose into one map from output pixel to input
position per example, applied in a single resampling: bilinear (or nearest) for the image, nearest for label and
weight. A pixel whose source lies outside the image gets weight 0, i.e. it is ignored: never a real class.
Photometric ops then act on the float image in 0..255 units: brightness, contrast, saturation, hue, gamma,
Gaussian blur, additive Gaussian noise, pixel dropout, coarse dropout.

Saturation and hue follow MMSegmentation's PhotoMetricDistortion (mmseg/datasets/pipelines/transforms.py): each
applied with probability 0.5 by default; saturation multiplies S of HSV by U(lower, upper) and clips it to its
range; hue adds a shift to H in OpenCV's units for 8-bit images, where a full turn is 180 (so the default
`hue_delta` 18 is +-36 degrees, a tenth of the circle) and wraps it. Differences from MMSeg, all below one grey
level or a matter of rounding: MMSeg draws the hue shift as an integer from numpy's randint(-delta, delta), i.e.
-delta..delta-1, and here it is uniform in [-delta, delta]; MMSeg rounds HSV to uint8 (OpenCV's 8-bit
conversion) and truncates the saturation product to an integer, here everything stays float; MMSeg puts contrast
either before saturation or after hue at random, here contrast is always before them (RGB images only).

Coordinates are (row, column) of pixel centres, with the origin at the first pixel.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import dm_pix
import jax
import jax.numpy as jnp
import ml_collections

# Op ids for fold_in: fixed forever, so a recipe's augmentation stream survives adding new ops.
_ZOOM, _HFLIP, _VFLIP, _ROTATE, _AFFINE, _ELASTIC = 0, 1, 2, 3, 4, 5
_BRIGHTNESS, _CONTRAST, _GAMMA, _BLUR, _NOISE, _PIXEL_DROPOUT, _COARSE_DROPOUT = 6, 7, 8, 9, 10, 11, 12
_SATURATION, _HUE = 13, 14

# OpenCV's hue units for 8-bit images (which MMSeg's hue_delta is in): a full turn is 180, 2 degrees each.
HUE_TURN = 180.0


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """The augmentation chain. Every op is off at its default; `*_prob` is the per-example probability.

  Attributes:
    zoom: (min, max) magnification of random scale + crop, drawn log-uniformly; 2 shows half the height and
      width at twice the size, 0.5 shows the crop at half size inside an ignored border (the window position is
      uniform). (1, 1) is off.
    hflip_prob, vflip_prob: flip probabilities.
    rotate_degrees: rotation angle drawn uniformly from [-r, r] about the centre.
    affine_scale: (min, max) of an extra per-axis scale (independent for rows and columns).
    affine_translate: largest shift as a fraction of height / width.
    affine_shear_degrees: shear angle drawn uniformly from [-s, s].
    elastic_sigma: standard deviation in pixels of the random displacements on a coarse grid (the U-Net paper:
      10 pixels on a 3x3 grid), interpolated bicubically to every pixel.
    elastic_grid: points per side of that grid.
    image_interpolation: "bilinear" or "nearest" sampling of the image (masks are always nearest).
    brightness: additive shift drawn from [-b, b], a fraction of 255.
    contrast: factor drawn from [1 - c, 1 + c], applied about the image mean.
    saturation: (lower, upper) of the factor multiplying HSV saturation (clipped to [0, 1]); MMSeg's
      saturation_range, (0.5, 1.5) there. (1, 1) is off. RGB images only.
    saturation_prob: MMSeg's 0.5.
    hue_delta: largest hue shift in OpenCV's 8-bit units (180 a full turn, so 18 is +-36 degrees); MMSeg's
      hue_delta, 18 there. The shift is drawn uniformly from [-d, d]. 0 is off. RGB images only.
    hue_prob: MMSeg's 0.5.
    gamma: (min, max) exponent drawn log-uniformly; out = 255 * (x / 255) ** gamma.
    blur_sigma: (min, max) standard deviation in pixels of a Gaussian blur.
    noise_std: (min, max) standard deviation of additive Gaussian noise, in 0..255 units.
    pixel_dropout: fraction of pixels set to 0 (all channels).
    coarse_dropout_holes: up to this many rectangles (at least one) set to 0.
    coarse_dropout_size: (min, max) side of a rectangle as a fraction of the image side.
  """
  zoom: tuple[float, float] = (1.0, 1.0)
  zoom_prob: float = 1.0
  hflip_prob: float = 0.0
  vflip_prob: float = 0.0
  rotate_degrees: float = 0.0
  rotate_prob: float = 1.0
  affine_scale: tuple[float, float] = (1.0, 1.0)
  affine_translate: float = 0.0
  affine_shear_degrees: float = 0.0
  affine_prob: float = 1.0
  elastic_sigma: float = 0.0
  elastic_grid: int = 3
  elastic_prob: float = 1.0
  image_interpolation: str = "bilinear"
  brightness: float = 0.0
  brightness_prob: float = 1.0
  contrast: float = 0.0
  contrast_prob: float = 1.0
  saturation: tuple[float, float] = (1.0, 1.0)
  saturation_prob: float = 0.5
  hue_delta: float = 0.0
  hue_prob: float = 0.5
  gamma: tuple[float, float] = (1.0, 1.0)
  gamma_prob: float = 1.0
  blur_sigma: tuple[float, float] = (0.0, 0.0)
  blur_prob: float = 0.0
  noise_std: tuple[float, float] = (0.0, 0.0)
  noise_prob: float = 0.0
  pixel_dropout: float = 0.0
  pixel_dropout_prob: float = 0.0
  coarse_dropout_holes: int = 0
  coarse_dropout_size: tuple[float, float] = (0.1, 0.2)
  coarse_dropout_prob: float = 0.0

  def __post_init__(self):
    def fail(name, fix):
      raise ValueError(f"config.augment.{name}={getattr(self, name)!r}: {fix}")

    for name in ("zoom", "affine_scale", "gamma"):
      lo, hi = getattr(self, name)
      if not 0 < lo <= hi:
        fail(name, "give (min, max) with 0 < min <= max")
    for name in ("saturation", "blur_sigma", "noise_std", "coarse_dropout_size"):
      lo, hi = getattr(self, name)
      if not 0 <= lo <= hi:
        fail(name, "give (min, max) with 0 <= min <= max")
    if self.coarse_dropout_size[1] > 1:
      fail("coarse_dropout_size", "sizes are fractions of the image side, at most 1")
    for f in dataclasses.fields(self):
      if f.name.endswith("_prob") and not 0 <= getattr(self, f.name) <= 1:
        fail(f.name, "a probability lies in [0, 1]")
    for name in ("rotate_degrees", "affine_translate", "affine_shear_degrees", "elastic_sigma", "brightness",
                 "contrast", "coarse_dropout_holes"):
      if getattr(self, name) < 0:
        fail(name, "must be >= 0")
    if not 0 <= self.hue_delta <= HUE_TURN / 2:
      fail("hue_delta", f"give 0..{HUE_TURN / 2:g} in OpenCV's hue units (a full turn is {HUE_TURN:g}; MMSeg: 18)")
    if not 0 <= self.pixel_dropout < 1:
      fail("pixel_dropout", "a fraction in [0, 1)")
    if self.elastic_grid < 2:
      fail("elastic_grid", "needs at least 2 points per side")
    if self.image_interpolation not in ("bilinear", "nearest"):
      fail("image_interpolation", "choose 'bilinear' or 'nearest'")

  @property
  def warps(self) -> bool:
    """Whether any op other than flips moves pixels (and so needs resampling)."""
    return (self.zoom != (1.0, 1.0) or self.rotate_degrees > 0 or self.affine_scale != (1.0, 1.0)
            or self.affine_translate > 0 or self.affine_shear_degrees > 0 or self.elastic_sigma > 0)

  @property
  def colour(self) -> bool:
    """Whether an op that needs RGB input (saturation, hue) is on."""
    return self.saturation != (1.0, 1.0) or self.hue_delta > 0

  @property
  def is_identity(self) -> bool:
    return self == AugmentConfig(image_interpolation=self.image_interpolation)


def config_block(**overrides: Any) -> ml_collections.ConfigDict:
  """A `config.augment` block with every AugmentConfig field at its default (all ops off)."""
  block = ml_collections.ConfigDict()
  for f in dataclasses.fields(AugmentConfig):
    block[f.name] = f.default
  for key, value in overrides.items():
    if key not in block:
      raise ValueError(f"Augmentation has no option {key!r}; options: {sorted(block)}.")
    block[key] = value
  return block


def from_config(block: Mapping[str, Any]) -> AugmentConfig:
  """AugmentConfig from a `config.augment` block (tuples from lists, so it is hashable for jit)."""
  values = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in dict(block).items()}
  return AugmentConfig(**values)


# ------------------------------------------------------------------------------------------------- geometry


def _coin(key: jax.Array, prob: float) -> jax.Array:
  return jax.random.uniform(key) < prob


def _log_uniform(key: jax.Array, lo: float, hi: float, shape=()) -> jax.Array:
  return jnp.exp(jax.random.uniform(key, shape, minval=math.log(lo), maxval=math.log(hi)))


def sample_transform(cfg: AugmentConfig, key: jax.Array, height: int, width: int) -> tuple[jax.Array, jax.Array]:
  """Draws one example's affine map from output to input coordinates: input = centre + A @ (p - centre) + t.

  Returns:
    (A [2, 2], t [2]) float32; the identity is exactly (I, 0).
  """
  size = jnp.array([height, width], jnp.float32)
  a = jnp.eye(2, dtype=jnp.float32)
  t = jnp.zeros(2, jnp.float32)
  if cfg.zoom != (1.0, 1.0):
    k = jax.random.fold_in(key, _ZOOM)
    k_on, k_s, k_pos = jax.random.split(k, 3)
    s = jnp.where(_coin(k_on, cfg.zoom_prob), _log_uniform(k_s, *cfg.zoom), 1.0)
    # The output window covers size / s input pixels; its centre moves uniformly over every position that keeps
    # the image inside the window (s < 1) or the window inside the image (s > 1).
    slack = 0.5 * size * jnp.abs(1.0 - 1.0 / s)
    t = t + jax.random.uniform(k_pos, (2,), minval=-1.0, maxval=1.0) * slack
    a = a / s
  if cfg.rotate_degrees > 0:
    k_on, k_a = jax.random.split(jax.random.fold_in(key, _ROTATE))
    theta = jnp.where(_coin(k_on, cfg.rotate_prob),
                      jnp.deg2rad(jax.random.uniform(k_a, minval=-cfg.rotate_degrees, maxval=cfg.rotate_degrees)),
                      0.0)
    c, s_ = jnp.cos(theta), jnp.sin(theta)
    a = a @ jnp.array([[c, -s_], [s_, c]])
  if cfg.affine_scale != (1.0, 1.0) or cfg.affine_translate > 0 or cfg.affine_shear_degrees > 0:
    k_on, k_s, k_t, k_h = jax.random.split(jax.random.fold_in(key, _AFFINE), 4)
    on = _coin(k_on, cfg.affine_prob)
    scale = jnp.where(on, _log_uniform(k_s, *cfg.affine_scale, shape=(2,)), 1.0)
    shift = jnp.where(on, jax.random.uniform(k_t, (2,), minval=-1.0, maxval=1.0) * cfg.affine_translate * size, 0.0)
    shear = jnp.where(on, jnp.tan(jnp.deg2rad(
        jax.random.uniform(k_h, minval=-cfg.affine_shear_degrees, maxval=cfg.affine_shear_degrees))), 0.0)
    forward = jnp.array([[1.0, 0.0], [shear, 1.0]]) @ jnp.diag(scale)
    # Sampling needs output -> input, the inverse of the forward (input -> output) affine map.
    inverse = jnp.linalg.inv(forward)
    a = a @ inverse
    t = t - a @ shift
  for op, prob, axis in ((_VFLIP, cfg.vflip_prob, 0), (_HFLIP, cfg.hflip_prob, 1)):
    if prob > 0:
      flip = jnp.where(_coin(jax.random.fold_in(key, op), prob), -1.0, 1.0)
      a = a * jnp.array([1.0, 1.0]).at[axis].set(flip)[None, :]
  return a, t


def sample_displacement(cfg: AugmentConfig, key: jax.Array, height: int, width: int) -> jax.Array:
  """U-Net's elastic deformation: N(0, sigma) displacements on a grid x grid lattice spanning the image corners,
  interpolated bicubically to every pixel. Returns [H, W, 2] (rows, columns) in pixels; zeros when off."""
  k_on, k_d = jax.random.split(jax.random.fold_in(key, _ELASTIC))
  g = cfg.elastic_grid
  coarse = cfg.elastic_sigma * jax.random.normal(k_d, (g, g, 2))
  coarse = jnp.where(_coin(k_on, cfg.elastic_prob), coarse, 0.0)
  # Lattice point i sits on pixel centre i * (n - 1) / (g - 1); scale_and_translate works in continuous
  # coordinates where sample i is centred at i + 0.5.
  scale = jnp.array([(height - 1) / (g - 1), (width - 1) / (g - 1)], jnp.float32)
  return jax.image.scale_and_translate(coarse, (height, width, 2), (0, 1), scale, 0.5 - 0.5 * scale,
                                       method="cubic", antialias=False)


def sampling_grid(a: jax.Array, t: jax.Array, height: int, width: int,
                  displacement: jax.Array | None = None) -> jax.Array:
  """Input position [H, W, 2] (row, column) each output pixel samples."""
  centre = jnp.array([(height - 1) / 2, (width - 1) / 2], jnp.float32)
  rows, cols = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32), jnp.arange(width, dtype=jnp.float32),
                            indexing="ij")
  offsets = jnp.stack([rows, cols], -1) - centre
  coords = centre + offsets @ a.T + t
  return coords if displacement is None else coords + displacement


def warp(image: jax.Array, label: jax.Array, weight: jax.Array, coords: jax.Array,
         image_interpolation: str = "bilinear") -> tuple[jax.Array, jax.Array, jax.Array]:
  """Resamples one example at `coords` [H', W', 2].

  The image is sampled bilinearly with edge clamping (or at the nearest pixel); label and weight at the nearest
  pixel (rounding half up, scipy's order-0 convention). Positions whose nearest pixel lies outside the input
  get weight 0 and label 0.

  Returns:
    (image float32 [H', W', C], label int32 [H', W'], weight float32 [H', W']).
  """
  h, w = label.shape
  flat_image = image.reshape(h * w, -1).astype(jnp.float32)
  r, c = coords[..., 0], coords[..., 1]
  rn, cn = jnp.floor(r + 0.5), jnp.floor(c + 0.5)
  inside = (rn >= 0) & (rn <= h - 1) & (cn >= 0) & (cn <= w - 1)
  nearest = (jnp.clip(rn, 0, h - 1).astype(jnp.int32) * w + jnp.clip(cn, 0, w - 1).astype(jnp.int32))
  out_weight = jnp.where(inside, weight.reshape(-1)[nearest], 0.0)
  out_label = jnp.where(out_weight > 0, label.reshape(-1)[nearest], 0)
  if image_interpolation == "nearest":
    out_image = flat_image[nearest]
  else:
    r0, c0 = jnp.floor(r), jnp.floor(c)
    fr, fc = (r - r0)[..., None], (c - c0)[..., None]

    def at(rr, cc):
      return flat_image[jnp.clip(rr, 0, h - 1).astype(jnp.int32) * w + jnp.clip(cc, 0, w - 1).astype(jnp.int32)]

    out_image = ((1 - fr) * ((1 - fc) * at(r0, c0) + fc * at(r0, c0 + 1))
                 + fr * ((1 - fc) * at(r0 + 1, c0) + fc * at(r0 + 1, c0 + 1)))
  return out_image, out_label.astype(jnp.int32), out_weight.astype(jnp.float32)


# ------------------------------------------------------------------------------------------------- photometric


def gaussian_blur(image: jax.Array, sigma: jax.Array, radius: int) -> jax.Array:
  """Separable Gaussian blur of [H, W, C] with a traced `sigma`, a static `radius` and mirror padding."""
  offsets = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  kernel = jnp.exp(-0.5 * (offsets / jnp.maximum(sigma, 1e-3)) ** 2)
  kernel = kernel / kernel.sum()
  h, w = image.shape[:2]
  out = jnp.pad(image, ((radius, radius), (0, 0), (0, 0)), mode="reflect")
  out = sum(kernel[i] * out[i:i + h] for i in range(2 * radius + 1))
  out = jnp.pad(out, ((0, 0), (radius, radius), (0, 0)), mode="reflect")
  return sum(kernel[i] * out[:, i:i + w] for i in range(2 * radius + 1))


def blur_radius(cfg: AugmentConfig, height: int, width: int) -> int:
  # Three standard deviations, but mirror padding needs the radius below each side.
  return max(1, min(math.ceil(3 * cfg.blur_sigma[1]), height - 1, width - 1))


def _photometric(cfg: AugmentConfig, key: jax.Array, image: jax.Array) -> jax.Array:
  h, w = image.shape[:2]
  if cfg.brightness > 0:
    k_on, k_v = jax.random.split(jax.random.fold_in(key, _BRIGHTNESS))
    delta = jax.random.uniform(k_v, minval=-cfg.brightness, maxval=cfg.brightness) * 255.0
    image = jnp.where(_coin(k_on, cfg.brightness_prob), jnp.clip(image + delta, 0, 255), image)
  if cfg.contrast > 0:
    k_on, k_v = jax.random.split(jax.random.fold_in(key, _CONTRAST))
    factor = jax.random.uniform(k_v, minval=1 - cfg.contrast, maxval=1 + cfg.contrast)
    mean = image.mean()
    image = jnp.where(_coin(k_on, cfg.contrast_prob), jnp.clip((image - mean) * factor + mean, 0, 255), image)
  if cfg.colour and image.shape[-1] != 3:
    raise ValueError(f"config.augment.saturation / hue_delta need RGB images; these have {image.shape[-1]} "
                     "channel(s). Leave them at (1, 1) / 0.")
  if cfg.saturation != (1.0, 1.0):
    k_on, k_v = jax.random.split(jax.random.fold_in(key, _SATURATION))
    factor = jax.random.uniform(k_v, minval=cfg.saturation[0], maxval=cfg.saturation[1])
    # dm_pix works on [0, 1] RGB: HSV round trip with S * factor clipped to [0, 1].
    adjusted = 255.0 * dm_pix.adjust_saturation(image / 255.0, factor)
    image = jnp.where(_coin(k_on, cfg.saturation_prob), jnp.clip(adjusted, 0, 255), image)
  if cfg.hue_delta > 0:
    k_on, k_v = jax.random.split(jax.random.fold_in(key, _HUE))
    delta = jax.random.uniform(k_v, minval=-cfg.hue_delta, maxval=cfg.hue_delta)
    # dm_pix's hue is a fraction of a turn, wrapped modulo 1 (MMSeg's "% 180").
    adjusted = 255.0 * dm_pix.adjust_hue(image / 255.0, delta / HUE_TURN)
    image = jnp.where(_coin(k_on, cfg.hue_prob), jnp.clip(adjusted, 0, 255), image)
  if cfg.gamma != (1.0, 1.0):
    k_on, k_v = jax.random.split(jax.random.fold_in(key, _GAMMA))
    g = _log_uniform(k_v, *cfg.gamma)
    image = jnp.where(_coin(k_on, cfg.gamma_prob), 255.0 * (image / 255.0) ** g, image)
  if cfg.blur_prob > 0 and cfg.blur_sigma[1] > 0:
    k_on, k_v = jax.random.split(jax.random.fold_in(key, _BLUR))
    sigma = jax.random.uniform(k_v, minval=cfg.blur_sigma[0], maxval=cfg.blur_sigma[1])
    image = jnp.where(_coin(k_on, cfg.blur_prob), gaussian_blur(image, sigma, blur_radius(cfg, h, w)), image)
  if cfg.noise_prob > 0 and cfg.noise_std[1] > 0:
    k_on, k_s, k_n = jax.random.split(jax.random.fold_in(key, _NOISE), 3)
    std = jax.random.uniform(k_s, minval=cfg.noise_std[0], maxval=cfg.noise_std[1])
    noisy = jnp.clip(image + std * jax.random.normal(k_n, image.shape), 0, 255)
    image = jnp.where(_coin(k_on, cfg.noise_prob), noisy, image)
  if cfg.pixel_dropout_prob > 0 and cfg.pixel_dropout > 0:
    k_on, k_m = jax.random.split(jax.random.fold_in(key, _PIXEL_DROPOUT))
    drop = jax.random.uniform(k_m, (h, w, 1)) < cfg.pixel_dropout
    image = jnp.where(_coin(k_on, cfg.pixel_dropout_prob) & drop, 0.0, image)
  if cfg.coarse_dropout_prob > 0 and cfg.coarse_dropout_holes > 0:
    image = jnp.where(coarse_dropout_mask(cfg, key, h, w)[..., None], 0.0, image)
  return image


def coarse_dropout_mask(cfg: AugmentConfig, key: jax.Array, height: int, width: int) -> jax.Array:
  """[H, W] bool: union of 1..coarse_dropout_holes random rectangles (all False when the coin says off)."""
  n = cfg.coarse_dropout_holes
  k_on, k_n, k_size, k_pos = jax.random.split(jax.random.fold_in(key, _COARSE_DROPOUT), 4)
  count = jax.random.randint(k_n, (), 1, n + 1)
  size = jnp.array([height, width], jnp.float32) * jax.random.uniform(
      k_size, (n, 2), minval=cfg.coarse_dropout_size[0], maxval=cfg.coarse_dropout_size[1])
  size = jnp.maximum(jnp.round(size), 1.0)
  start = jnp.floor(jax.random.uniform(k_pos, (n, 2)) * (jnp.array([height, width], jnp.float32) - size + 1))
  rows = jnp.arange(height, dtype=jnp.float32)[None, :]
  cols = jnp.arange(width, dtype=jnp.float32)[None, :]
  in_rows = (rows >= start[:, :1]) & (rows < start[:, :1] + size[:, :1])  # [n, H]
  in_cols = (cols >= start[:, 1:]) & (cols < start[:, 1:] + size[:, 1:])  # [n, W]
  active = jnp.arange(n) < count
  holes = in_rows[:, :, None] & in_cols[:, None, :] & active[:, None, None]
  return holes.any(0) & _coin(k_on, cfg.coarse_dropout_prob)


# ------------------------------------------------------------------------------------------------- the chain


def augment_example(cfg: AugmentConfig, key: jax.Array, image: jax.Array, label: jax.Array,
                    weight: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The whole chain on one example: image [H, W, C] (any dtype, 0..255), label [H, W], weight [H, W].

  Returns:
    (image float32 [H, W, C] in 0..255, label int32, weight float32), the output the same size as the input.
  """
  h, w = label.shape
  image = image.astype(jnp.float32)
  if cfg.warps:
    a, t = sample_transform(cfg, key, h, w)
    displacement = sample_displacement(cfg, key, h, w) if cfg.elastic_sigma > 0 else None
    image, label, weight = warp(image, label, weight, sampling_grid(a, t, h, w, displacement),
                                cfg.image_interpolation)
  else:
    # Flips alone move whole rows or columns: reverse instead of resampling.
    for op, prob, axis in ((_VFLIP, cfg.vflip_prob, 0), (_HFLIP, cfg.hflip_prob, 1)):
      if prob > 0:
        flip = _coin(jax.random.fold_in(key, op), prob)
        image, label, weight = (jnp.where(flip, jnp.flip(x, axis), x) for x in (image, label, weight))
  return _photometric(cfg, key, image), label.astype(jnp.int32), weight.astype(jnp.float32)


def augment_batch(cfg: AugmentConfig, key: jax.Array, image: jax.Array, label: jax.Array,
                  weight: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """`augment_example` on each example of a batch with key `fold_in(key, i)` for example i.

  Keys depend on the position in the global batch only, so 1 and 8 devices produce the same batch.
  """
  if cfg.is_identity:
    return image.astype(jnp.float32), label.astype(jnp.int32), weight.astype(jnp.float32)
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(image.shape[0]))
  return jax.vmap(lambda k, x, y, m: augment_example(cfg, k, x, y, m))(keys, image, label, weight)
