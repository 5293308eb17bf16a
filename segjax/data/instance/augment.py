"""Device augmentation of instance batches: horizontal flip, scale jitter and a crop at the fixed output size.

Large-scale jitter as Ghiasi et al., "Simple Copy-Paste is a Strong Data Augmentation Method for Instance
Segmentation" (CVPR 2021) and Detectron2's LSJ recipe (ResizeScale + FixedSizeCrop): each image is resized by a
factor s drawn uniformly from `scale_range`, then a window of the output size is cut from it at a random
pixel-aligned position; an image made smaller than the window sits at a random position inside it, zeros around.
Masks move with the image (nearest pixel), and the boxes are recomputed from the transformed masks (tight boxes,
x2 = last column + 1), as Detectron2 does for crops (`recompute_boxes`): scaling a box cannot know how much of
the object a crop cut off. An instance left with fewer than `min_pixels` pixels is dropped (valid 0, class 0,
box and mask zero, crowd 0); crowd flags of the others are carried.

jitted, shapes static, one key per example: example i uses `fold_in(key, i)` (its position in the global batch),
so 1 device and 8 devices augment a batch the same way, and each op draws from `fold_in(example_key, op)` so
turning one op on never changes another's draws (as segjax.data.augment).

The transform is axis-aligned, so it is separable: output row i samples input row
  y(i) = (i + 0.5 + oy) / s - 0.5
and column j samples x(j) likewise, mirrored (x -> W - 1 - x) when flipped, where (oy, ox) is the window's
integer offset in the resized image (negative: the resized image sits inside the window). The image is sampled
bilinearly (edge clamped), masks at the nearest pixel; a pixel whose nearest source lies outside the image is 0
in both. A semantic map `sem_seg` (Panoptic FPN's targets), when the batch has one, moves as the masks do, its
pixels outside the image becoming SEM_IGNORE.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

# Op ids for fold_in: fixed, so adding an op never changes the others' draws.
_HFLIP, _SCALE, _CROP = 0, 1, 2
_INSTANCE_KEYS = ("boxes", "classes", "masks", "valid", "crowd")
SEM_IGNORE = 255  # segjax.data.panoptic's ignore label


@dataclasses.dataclass(frozen=True)
class InstanceAugment:
  """Settings of `augment_instances` (hashable: pass it as a static argument to jit).

  Attributes:
    hflip_prob: probability of a horizontal flip.
    scale_range: (min, max) of the resize factor, drawn uniformly ((0.1, 2.0) is LSJ's, (1, 1) is off).
    min_pixels: an instance with fewer mask pixels after the transform is dropped.
  """
  hflip_prob: float = 0.0
  scale_range: tuple[float, float] = (1.0, 1.0)
  min_pixels: int = 1

  def __post_init__(self):
    lo, hi = self.scale_range
    if not 0 < lo <= hi:
      raise ValueError(f"scale_range={self.scale_range!r}: give (min, max) with 0 < min <= max.")
    if not 0 <= self.hflip_prob <= 1:
      raise ValueError(f"hflip_prob={self.hflip_prob!r}: a probability lies in [0, 1].")
    if self.min_pixels < 1:
      raise ValueError(f"min_pixels={self.min_pixels!r}: at least 1 (an empty mask is never an instance).")

  @property
  def is_identity(self) -> bool:
    return self.hflip_prob == 0 and self.scale_range == (1.0, 1.0)


def sample_params(settings: InstanceAugment, key: jax.Array, height: int, width: int
                  ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """One example's draws: (scale s float32, offset (oy, ox) float32 integers, flip bool); see the module doc."""
  flip = jax.random.uniform(jax.random.fold_in(key, _HFLIP)) < settings.hflip_prob
  lo, hi = settings.scale_range
  if lo == hi:
    scale = jnp.float32(lo)
  else:
    scale = jax.random.uniform(jax.random.fold_in(key, _SCALE), minval=lo, maxval=hi)
  # Slack between the resized image and the window, per axis: positive -> crop inside, negative -> pad around.
  slack = jnp.array([height, width], jnp.float32) * (scale - 1.0)
  u = jax.random.uniform(jax.random.fold_in(key, _CROP), (2,))
  offset = jnp.sign(slack) * jnp.floor(u * (jnp.floor(jnp.abs(slack)) + 1.0))
  return scale, offset, flip


def source_positions(scale: jax.Array, offset: jax.Array, flip: jax.Array, height: int, width: int
                     ) -> tuple[jax.Array, jax.Array]:
  """Input row [H] and column [W] positions each output row and column samples."""
  rows = (jnp.arange(height, dtype=jnp.float32) + 0.5 + offset[0]) / scale - 0.5
  cols = (jnp.arange(width, dtype=jnp.float32) + 0.5 + offset[1]) / scale - 0.5
  return rows, jnp.where(flip, width - 1 - cols, cols)


def _nearest(pos: jax.Array, size: int) -> tuple[jax.Array, jax.Array]:
  index = jnp.floor(pos + 0.5)
  return jnp.clip(index, 0, size - 1).astype(jnp.int32), (index >= 0) & (index <= size - 1)


def _bilinear_axis(image: jax.Array, pos: jax.Array, axis: int) -> jax.Array:
  size = image.shape[axis]
  lo = jnp.floor(pos)
  frac = pos - lo
  i0 = jnp.clip(lo, 0, size - 1).astype(jnp.int32)
  i1 = jnp.clip(lo + 1, 0, size - 1).astype(jnp.int32)
  shape = [1] * image.ndim
  shape[axis] = -1
  frac = frac.reshape(shape)
  return jnp.take(image, i0, axis=axis) * (1 - frac) + jnp.take(image, i1, axis=axis) * frac


def boxes_from_masks(masks: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Tight (x1, y1, x2, y2) boxes [N, 4] of masks [N, H, W] and their pixel counts [N] (empty mask: box 0)."""
  h, w = masks.shape[1:]
  on = masks != 0
  rows, cols = on.any(axis=2), on.any(axis=1)
  y1 = jnp.argmax(rows, axis=1)
  y2 = h - jnp.argmax(rows[:, ::-1], axis=1)
  x1 = jnp.argmax(cols, axis=1)
  x2 = w - jnp.argmax(cols[:, ::-1], axis=1)
  count = on.sum(axis=(1, 2))
  boxes = jnp.stack([x1, y1, x2, y2], axis=1).astype(jnp.float32)
  return jnp.where((count > 0)[:, None], boxes, 0.0), count


def augment_example(settings: InstanceAugment, key: jax.Array, example: dict[str, jax.Array]
                    ) -> dict[str, jax.Array]:
  """The transform on one example (fields without the batch axis); see `augment_instances`."""
  image = example["image"].astype(jnp.float32)
  height, width = image.shape[:2]
  scale, offset, flip = sample_params(settings, key, height, width)
  rows, cols = source_positions(scale, offset, flip, height, width)
  r_idx, r_in = _nearest(rows, height)
  c_idx, c_in = _nearest(cols, width)
  inside = r_in[:, None] & c_in[None, :]
  image = _bilinear_axis(_bilinear_axis(image, rows, 0), cols, 1)
  image = jnp.where(inside[..., None], image, 0.0)
  masks = jnp.take(jnp.take(example["masks"], r_idx, axis=1), c_idx, axis=2)
  masks = jnp.where(inside[None], masks, 0).astype(example["masks"].dtype)
  boxes, count = boxes_from_masks(masks)
  keep = (example["valid"] > 0) & (count >= settings.min_pixels)
  out = dict(example)
  out.update(
      image=image,
      masks=jnp.where(keep[:, None, None], masks, 0).astype(example["masks"].dtype),
      boxes=jnp.where(keep[:, None], boxes, 0.0),
      classes=jnp.where(keep, example["classes"], 0).astype(example["classes"].dtype),
      valid=jnp.where(keep, example["valid"], 0).astype(example["valid"].dtype),
      crowd=jnp.where(keep, example["crowd"], 0).astype(example["crowd"].dtype))
  if "sem_seg" in example:
    sem = jnp.take(jnp.take(example["sem_seg"], r_idx, axis=0), c_idx, axis=1)
    out["sem_seg"] = jnp.where(inside, sem, SEM_IGNORE).astype(example["sem_seg"].dtype)
  return out


def augment_instances(settings: InstanceAugment, key: jax.Array, batch: dict[str, Any]) -> dict[str, jax.Array]:
  """Flip, scale jitter and crop of a training batch (segjax.data.instance.pipeline's fields), inside jit.

  Args:
    settings: the InstanceAugment (static under jit).
    key: this step's key (e.g. fold_in(seed_key, step)); example i uses fold_in(key, i).
    batch: image [B, H, W, 3] (any dtype, 0..255), boxes [B, N, 4], classes [B, N], masks [B, N, H, W],
      valid [B, N], crowd [B, N], optionally sem_seg [B, H, W]; other fields pass through unchanged.

  Returns:
    The batch with image float32 [B, H, W, 3] in 0..255 (normalise after), masks, boxes, classes, valid and
    crowd transformed (dropped instances zeroed), shapes unchanged. With identity settings only the image's
    dtype changes: the boxes stay as the host made them.
  """
  batch = dict(batch)
  if settings.is_identity:
    return {**batch, "image": batch["image"].astype(jnp.float32)}
  fields = {k: batch[k] for k in ("image", *_INSTANCE_KEYS, "sem_seg") if k in batch}
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(fields["image"].shape[0]))
  out = jax.vmap(lambda k, ex: augment_example(settings, k, ex))(keys, fields)
  return {**batch, **out}
