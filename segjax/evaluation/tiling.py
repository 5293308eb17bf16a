"""Tile geometry of the tiled inference modes: window offsets, the Gaussian importance map, mirror indices, and the
reading of one window out of an image (segjax.evaluation.inference documents the modes)."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import flax
import numpy as np

from segjax import models


def pooling_grid(model: flax.linen.Module) -> int:
  """The step between a valid-convolution net's valid input sizes (2**depth for UNetValid): shifting its input by
  a multiple of it shifts the output by the same amount, other shifts change the pooling windows."""
  if not models.is_valid_conv(model):
    return max(1, models.size_divisor(model))
  first = int(model.input_size_for(1))
  return int(model.input_size_for(models.output_size(model, first) + 1)) - first


def gaussian_weights(tile_size: Sequence[int], sigma: float) -> np.ndarray:
  """[h, w] float32 separable Gaussian importance map, peak 1 at the tile's centre ((n - 1) / 2, so the map is
  symmetric under flips; nnU-Net centres at n // 2), sigma = `sigma` * side in each axis."""
  axes = []
  for n in tile_size:
    r = np.arange(n, dtype=np.float64) - (n - 1) / 2
    axes.append(np.exp(-0.5 * (r / (sigma * n)) ** 2))
  return np.outer(*axes).astype(np.float32)


def slide_starts(size: int, tile: int, stride: int) -> list[int]:
  """Window offsets along one side, as MMSegmentation's slide_inference (the last one aligned to the border).
  `size` >= `tile` (smaller images are padded to a tile first)."""
  n = max(size - tile + stride - 1, 0) // stride + 1
  return sorted({max(min(i * stride, size - tile), 0) for i in range(n)})


def tile_starts(size: int, tile: int, grid: int) -> list[int]:
  """Output-tile offsets along one side for overlap-tile: multiples of `grid`, stepping by the largest multiple of
  `grid` not above `tile` (tiles overlap when tile is no multiple of grid), the last one the first multiple of
  `grid` whose tile reaches the border (so it may overhang it by less than `grid`, into the mirror padding)."""
  step = max(grid, tile // grid * grid)
  last = max(0, -(-(size - tile) // grid) * grid)
  return sorted(set(range(0, last, step)) | {last})


def reflect_index(index: np.ndarray, size: int) -> np.ndarray:
  """numpy's / jnp.pad's "reflect" (edge not repeated) as an index map, for indices any distance outside."""
  if size == 1:
    return np.zeros_like(index)
  period = 2 * (size - 1)
  j = np.mod(index, period)
  return np.where(j >= size, period - j, j)


@dataclasses.dataclass(frozen=True)
class Window:
  view: int  # index into params.flips
  row: int  # window's top-left in the view's (flipped) image coordinates: its output covers rows row..row+oh
  col: int
  top: int  # first image row (unflipped coordinates) its output covers: the streaming order


def read_window(image: np.ndarray, win: Window, flip: tuple[bool, bool], margin: int, size: tuple[int, int],
                 padding: str) -> tuple[np.ndarray, np.ndarray]:
  """The input window of `win` ([ih, iw, C], and where it lies inside the image) from the unflipped image.

  Window row j of the view is view row win.row - margin + j, i.e. image row (that, or H - 1 - that flipped);
  rows outside the image come from the padding: mirrored ("reflect", which commutes with flips) or masked out
  ("zero": 0 after normalisation).
  """
  idx = []
  inside = []
  for axis, (start, n, flipped) in enumerate(((win.row, size[0], flip[0]), (win.col, size[1], flip[1]))):
    extent = image.shape[axis]
    i = np.arange(start - margin, start - margin + n)
    if flipped:
      i = extent - 1 - i
    inside.append((i >= 0) & (i < extent) if padding == "zero" else np.ones(n, bool))
    idx.append(reflect_index(i, extent) if padding == "reflect" else np.clip(i, 0, extent - 1))
  window = image[idx[0][:, None], idx[1][None, :]]
  return window, inside[0][:, None] & inside[1][None, :]
