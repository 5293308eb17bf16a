"""Colour-coded label maps, overlays and captioned panels, as RGB arrays and PNG files."""

from __future__ import annotations

import functools
import pathlib
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Unscored pixels (weight 0: void labels, outside a validity mask, eval padding) are drawn as diagonal stripes of
# two mid greys in the ground-truth and prediction panels: a pattern no palette's solid class colour can be mistaken
# for (a solid grey or black is some dataset's class colour: black is VOC's background, (128, 128, 128) its cat).
UNSCORED_COLORS = ((112, 112, 112), (160, 160, 160))
UNSCORED_STRIPE = 4  # pixels per stripe
# Between the panels of a row (image | ground truth | prediction | overlay).
SEPARATOR = 4
PANEL_NAMES = ("image", "label", "pred", "overlay")


def unscored_pattern(height: int, width: int) -> np.ndarray:
  """The stripes unscored pixels are drawn with: uint8 [height, width, 3], `UNSCORED_COLORS[((row + col) //
  UNSCORED_STRIPE) % 2]` at (row, col) of the panel."""
  rows, cols = np.mgrid[:height, :width]
  return np.asarray(UNSCORED_COLORS, np.uint8)[((rows + cols) // UNSCORED_STRIPE) % 2]


def colorize(label: np.ndarray, palette: Sequence[Sequence[int]], valid: np.ndarray | None = None) -> np.ndarray:
  """Label map [H, W] -> RGB uint8 [H, W, 3]; pixels with valid == 0 are drawn as `unscored_pattern`."""
  table = np.asarray(palette, np.uint8)
  rgb = table[np.clip(label, 0, len(table) - 1)]
  if valid is not None:
    unscored = np.asarray(valid) == 0
    rgb[unscored] = unscored_pattern(*rgb.shape[:2])[unscored]
  return rgb


def to_rgb(image: np.ndarray) -> np.ndarray:
  """[H, W], [H, W, 1] or [H, W, C >= 3] -> uint8 [H, W, 3] (grey repeated, extra channels dropped)."""
  image = np.asarray(image, np.uint8)
  if image.ndim == 2:
    image = image[..., None]
  return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image[..., :3]


def overlay(image: np.ndarray, rgb_label: np.ndarray, alpha: float = 0.5) -> np.ndarray:
  """`rgb_label` blended over `image` with weight `alpha`; uint8 [H, W, 3]."""
  blended = (1 - alpha) * to_rgb(image).astype(np.float32) + alpha * rgb_label.astype(np.float32)
  return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def crop_to_valid(valid: np.ndarray, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
  """`arrays` ([H, W, ...] each) cut to rows/columns [0, last valid + 1): evaluation pads images at the bottom and
  right, with weight 0. Unchanged when no pixel is valid."""
  rows, cols = np.nonzero(np.asarray(valid) > 0)
  if not rows.size:
    return arrays
  return tuple(a[:rows.max() + 1, :cols.max() + 1] for a in arrays)


def scaled_size(height: int, width: int, max_side: int | None) -> tuple[int, int]:
  """(h, w) with the longer side at most `max_side` and the aspect ratio kept; never upscales."""
  if max_side is None or max(height, width) <= max_side:
    return height, width
  scale = max_side / max(height, width)
  return max(1, round(height * scale)), max(1, round(width * scale))


def resize_nearest(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Nearest-neighbour resize of [H, W, ...] to `size` (h, w), sampling at pixel centres. For label maps: an
  interpolating resize would invent classes at the borders between two others."""
  height, width = array.shape[:2]
  rows = np.minimum(((np.arange(size[0]) + 0.5) * height / size[0]).astype(np.int64), height - 1)
  cols = np.minimum(((np.arange(size[1]) + 0.5) * width / size[1]).astype(np.int64), width - 1)
  return array[rows[:, None], cols[None, :]]


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """uint8 image -> RGB uint8 [h, w, 3], box-filtered (averages every source pixel, so no aliasing)."""
  rgb = to_rgb(image)
  if rgb.shape[:2] == tuple(size):
    return rgb
  return np.asarray(Image.fromarray(rgb).resize((size[1], size[0]), Image.Resampling.BOX))


def panel(image: np.ndarray, label: np.ndarray, pred: np.ndarray, valid: np.ndarray,
          palette: Sequence[Sequence[int]], *, max_side: int | None = None) -> np.ndarray:
  """image | ground truth | prediction | prediction over image, side by side, `SEPARATOR` white columns apart.

  Args:
    image: uint8 [H, W] or [H, W, C].
    label: ground truth [H, W].
    pred: prediction [H, W].
    valid: [H, W] weight; the panel is cropped to the bounding box of valid > 0 (evaluation pads images at the
      bottom and right). Where valid == 0 (void labels, outside a validity mask, padding left inside the box) the
      ground truth and the prediction are drawn as `unscored_pattern`, and the overlay blends that pattern, not a
      class colour, over the image: only what is scored shows a class.
    palette: RGB per class id.
    max_side: downscale each of the four panels so that its longer side is at most this (None: full size).

  Returns:
    uint8 [h, 4 * w + 3 * SEPARATOR, 3].
  """
  image, label, pred, valid = crop_to_valid(valid, np.asarray(image), np.asarray(label), np.asarray(pred),
                                            np.asarray(valid))
  size = scaled_size(*label.shape[:2], max_side)
  image = resize_image(image, size)
  label, pred, valid = (resize_nearest(a, size) for a in (label, pred, valid))
  pred_rgb = colorize(pred, palette, valid)  # the network's output where nothing is scored is not shown
  sep = np.full((size[0], SEPARATOR, 3), 255, np.uint8)
  return np.concatenate([image, sep, colorize(label, palette, valid), sep, pred_rgb, sep, overlay(image, pred_rgb)],
                        axis=1)


def panel_boxes(panel_shape: Sequence[int], top: int = 0, left: int = 0) -> dict[str, tuple[int, int, int, int]]:
  """Where `panel`'s four parts lie: {name in PANEL_NAMES: (top, left, bottom, right)}, offset by (top, left)."""
  height, width = panel_shape[:2]
  part = (width - 3 * SEPARATOR) // 4
  return {name: (top, left + i * (part + SEPARATOR), top + height, left + i * (part + SEPARATOR) + part)
          for i, name in enumerate(PANEL_NAMES)}


@functools.cache
def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
  return ImageFont.load_default()


def text_size(text: str) -> tuple[int, int]:
  """(width, height) in pixels of `text` in the default font."""
  left, top, right, bottom = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), text, font=_font())
  return right - min(left, 0), bottom - min(top, 0)


def caption(rgb: np.ndarray, text: str, *, width: int | None = None, pad: int = 3) -> np.ndarray:
  """`rgb` [H, W, 3] under a white strip with `text` in black (PIL's default font), padded on the right with white
  to max(W, the text's width, `width`).

  Returns:
    uint8 [strip + H, max(W, text, width), 3]; `rgb` starts at row `strip` = `caption_height(text, pad)`.
  """
  text_w, _ = text_size(text)
  strip = caption_height(text, pad)
  out_w = max(rgb.shape[1], text_w + 2 * pad, width or 0)
  out = np.full((strip + rgb.shape[0], out_w, 3), 255, np.uint8)
  out[strip:, :rgb.shape[1]] = rgb
  canvas = Image.fromarray(out)
  ImageDraw.Draw(canvas).text((pad, pad), text, fill=(0, 0, 0), font=_font())
  return np.asarray(canvas)


def caption_height(text: str, pad: int = 3) -> int:
  """Rows of the strip `caption` puts above an image."""
  return text_size(text)[1] + 2 * pad


def save_panel(path: str | pathlib.Path, image: np.ndarray, label: np.ndarray, pred: np.ndarray,
               valid: np.ndarray, palette: Sequence[Sequence[int]]) -> None:
  """Writes `path`: `panel(...)` at full size, cropped to the valid region's bounding box (evaluation pads
  images)."""
  Image.fromarray(panel(image, label, pred, valid, palette)).save(path)


def overlay_images(samples: Sequence[dict[str, Any]], palette, max_side: int = 256) -> list[tuple[str, np.ndarray]]:
  """`evaluation.semantic.Evaluation.samples` as (name, image | ground truth | prediction | overlay) pairs, eval.py's panels."""
  return [(f"{int(s['index']):05d}", panel(s["image"], s["label"], s["pred"], s["weight"], palette,
                                               max_side=max_side)) for s in samples]
