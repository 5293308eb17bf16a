"""Helpers shared by the instance data tests: the independent references."""

from __future__ import annotations

import numpy as np
from PIL import Image


def loop_box(mask) -> list[int]:
  """(x1, y1, x2, y2) of a mask's pixels by a plain loop: x2 is one past the last column holding a pixel."""
  xs, ys = [], []
  for r in range(mask.shape[0]):
    for c in range(mask.shape[1]):
      if mask[r, c]:
        xs.append(c)
        ys.append(r)
  return [min(xs), min(ys), max(xs) + 1, max(ys) + 1]


def write_folder(root, stems=("p1", "p2", "p3"), size=(12, 16), penn_fudan=True, seed=0):
  """Images and palette id masks; p1 holds ids 1 and 2 (touching), p2 id 1, p3 none (a negative)."""
  rng = np.random.default_rng(seed)
  images, masks = (root / "PNGImages", root / "PedMasks") if penn_fudan else (root / "images", root / "masks")
  images.mkdir(parents=True, exist_ok=True)
  masks.mkdir(parents=True, exist_ok=True)
  h, w = size
  for k, stem in enumerate(stems):
    Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8)).save(images / f"{stem}.png")
    ids = np.zeros((h, w), np.uint8)
    if k == 0:
      ids[1:6, 2:7] = 1
      ids[4:10, 7:15] = 2
    elif k == 1:
      ids[3:11, 0:4] = 1
    mask = Image.fromarray(ids, mode="L").convert("P")
    mask.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (3 * 253))
    mask.save(masks / (f"{stem}_mask.png" if penn_fudan else f"{stem}.png"))
  return images, masks
