"""Helpers shared by the instance data tests: the independent references."""

from __future__ import annotations


def loop_box(mask) -> list[int]:
  """(x1, y1, x2, y2) of a mask's pixels by a plain loop: x2 is one past the last column holding a pixel."""
  xs, ys = [], []
  for r in range(mask.shape[0]):
    for c in range(mask.shape[1]):
      if mask[r, c]:
        xs.append(c)
        ys.append(r)
  return [min(xs), min(ys), max(xs) + 1, max(ys) + 1]
