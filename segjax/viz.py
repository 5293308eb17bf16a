"""Colour-coded label maps and overlays written as PNG."""

from __future__ import annotations

import pathlib
from typing import Sequence

import numpy as np
from PIL import Image

IGNORE_COLOR = (0, 0, 0)


def colorize(label: np.ndarray, palette: Sequence[Sequence[int]], valid: np.ndarray | None = None) -> np.ndarray:
  """Label map [H, W] -> RGB uint8 [H, W, 3]; pixels with valid == 0 are drawn black."""
  table = np.asarray(palette, np.uint8)
  rgb = table[np.clip(label, 0, len(table) - 1)]
  if valid is not None:
    rgb[np.asarray(valid) == 0] = IGNORE_COLOR
  return rgb


def to_rgb(image: np.ndarray) -> np.ndarray:
  image = np.asarray(image, np.uint8)
  if image.ndim == 2:
    image = image[..., None]
  return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image[..., :3]


def overlay(image: np.ndarray, rgb_label: np.ndarray, alpha: float = 0.5) -> np.ndarray:
  blended = (1 - alpha) * to_rgb(image).astype(np.float32) + alpha * rgb_label.astype(np.float32)
  return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def save_panel(path: str | pathlib.Path, image: np.ndarray, label: np.ndarray, pred: np.ndarray,
               valid: np.ndarray, palette: Sequence[Sequence[int]]) -> None:
  """Writes `path`: image | ground truth | prediction | prediction over image, side by side, cropped to
  the valid region's bounding box (evaluation pads images)."""
  rows, cols = np.nonzero(np.asarray(valid) > 0)
  if rows.size:
    window = (slice(0, rows.max() + 1), slice(0, cols.max() + 1))
    image, label, pred, valid = image[window], label[window], pred[window], valid[window]
  pred_rgb = colorize(pred, palette)
  sep = np.full((image.shape[0], 4, 3), 255, np.uint8)
  panel = np.concatenate([to_rgb(image), sep, colorize(label, palette, valid), sep, pred_rgb, sep,
                          overlay(image, pred_rgb)], axis=1)
  Image.fromarray(panel).save(path)
