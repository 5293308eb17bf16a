"""The one forward pass every path shares: normalise, pad, apply, crop.

The train step, evaluation, the Segmenter (ensembles, TTA, tiles), predict and export all call a `Forward`, so
the normalisation a network was trained with and the padding it needs cannot drift apart between them.

- normalise: "mean_std" ((x - mean) / std per channel, 0..255 units) or "per_image" (each image to zero mean and
  unit variance, tf.image.per_image_standardization; the Segmenter passes whole-image statistics for tiles).
- pad (inference only): a padded net sees its input zero-padded (after normalisation) at the bottom/right up to a
  multiple of its `size_divisor` (and at least its smallest input); a valid-convolution net sees it mirror-padded
  by its margin up to its next valid input size (the U-Net paper's overlap-tile strategy for one tile).
- apply, then crop the logits back to H x W, as float32.

Training applies the net to its crop as it is (crops are checked against the model when the Experiment is built):
a valid-convolution net then predicts the centre of the crop, and the task crops its targets to the logits.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import math

import flax
import jax
import jax.numpy as jnp
import numpy as np

from segjax import models

NORMALIZATIONS = ("mean_std", "per_image")


def per_image_stats(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-image mean and standard deviation of float [B, H, W, C], the deviation floored at 1/sqrt(number of values)
  (tf.image.per_image_standardization's definition, so a constant image maps to zeros)."""
  axes = tuple(range(1, x.ndim))
  n = math.prod(x.shape[1:])
  # A symbolic size (shape-polymorphic export) has no numpy square root; a concrete one keeps numpy's float.
  floor = 1.0 / np.sqrt(n) if isinstance(n, int) else jax.lax.rsqrt(jnp.asarray(n, jnp.float32))
  return x.mean(axes, keepdims=True), jnp.maximum(x.std(axes, keepdims=True), floor)


def per_image_stats_host(image: np.ndarray) -> tuple[float, float]:
  """`per_image_stats` of ONE [H, W, C] image on the host, in float64 by row chunks: the statistics of an image too
  large for the devices, whose tiles are then normalised with them (segjax.evaluation.inference)."""
  n = image.size
  total, sq = 0.0, 0.0
  for r in range(0, image.shape[0], 1024):
    chunk = image[r:r + 1024].astype(np.float64)
    total += chunk.sum()
  mean = total / n
  for r in range(0, image.shape[0], 1024):
    sq += ((image[r:r + 1024].astype(np.float64) - mean) ** 2).sum()
  return mean, max(math.sqrt(sq / n), 1.0 / math.sqrt(n))


def variables(params: Any, batch_stats: Any = None) -> dict[str, Any]:
  """The variables dict `Module.apply` takes: {"params"} plus {"batch_stats"} for a net that has BatchNorm."""
  out = {"params": params}
  if batch_stats:
    out["batch_stats"] = batch_stats
  return out


def _static(n) -> bool:
  # A symbolic dimension (shape-polymorphic export) cannot be compared; export's size rules already guarantee it.
  return isinstance(n, int)


@dataclasses.dataclass(frozen=True)
class Forward:
  """A network with the input convention it was trained with.

  Attributes:
    model: the Flax module.
    mean: per-channel mean (0..255 units) for "mean_std"; one value broadcasts over channels.
    std: per-channel standard deviation.
    normalization: "mean_std" or "per_image".
  """
  model: flax.linen.Module
  mean: tuple[float, ...] = (0.0,)
  std: tuple[float, ...] = (1.0,)
  normalization: str = "mean_std"

  def __post_init__(self):
    if self.normalization not in NORMALIZATIONS:
      raise ValueError(f"normalization={self.normalization!r}: choose one of {NORMALIZATIONS}")
    object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
    object.__setattr__(self, "std", tuple(float(s) for s in self.std))

  def normalize(self, images: jax.Array, stats: Sequence[jax.Array] | None = None) -> jax.Array:
    """[B, H, W, C] in 0..255 -> float32 model input. `stats`: (mean, std) of "per_image" computed elsewhere (the
    whole image when the input is a tile or a resized view of it); default: each image's own."""
    x = images.astype(jnp.float32)
    if self.normalization == "per_image":
      mean, std = per_image_stats(x) if stats is None else stats
      return (x - mean) / std
    return (x - jnp.asarray(self.mean, jnp.float32)) / jnp.asarray(self.std, jnp.float32)

  def apply(self, variables_: dict[str, Any], x: jax.Array, *, train: bool = False, rngs=None, mutable=False):
    """`model.apply` on normalised `x` as it is (no padding): training crops and inference tiles."""
    if mutable is False:
      return self.model.apply(variables_, x, train=train, rngs=rngs)
    return self.model.apply(variables_, x, train=train, rngs=rngs, mutable=mutable)

  def pad(self, x: jax.Array) -> jax.Array:
    """Normalised [B, H, W, C] padded to an input size the model takes (see the module docstring)."""
    h, w = x.shape[1:3]
    model = self.model
    if models.is_valid_conv(model):
      m = int(model.input_margin)
      sh, sw = model.input_size_for(h), model.input_size_for(w)
      return jnp.pad(x, ((0, 0), (m, sh - h - m), (m, sw - w - m), (0, 0)), mode="reflect")
    if not (_static(h) and _static(w)):
      return x
    d, smallest = models.size_divisor(model), models.init_size(model)
    ph, pw = (max(smallest, -(-n // d) * d) for n in (h, w))
    if (ph, pw) == (h, w):
      return x
    return jnp.pad(x, ((0, 0), (0, ph - h), (0, pw - w), (0, 0)))

  def logits(self, variables_: dict[str, Any], x: jax.Array) -> jax.Array:
    """Logits [B, H, W, K] float32 of normalised [B, H, W, C] `x` in inference mode (padded, applied, cropped)."""
    h, w = x.shape[1:3]
    return self.apply(variables_, self.pad(x))[:, :h, :w].astype(jnp.float32)

  def __call__(self, variables_: dict[str, Any], images: jax.Array) -> jax.Array:
    """Logits [B, H, W, K] float32 of [B, H, W, C] images in 0..255, in inference mode (BatchNorm running
    averages, no dropout)."""
    return self.logits(variables_, self.normalize(images))
