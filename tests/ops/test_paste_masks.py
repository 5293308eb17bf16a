"""segjax.ops.masks against torchvision's paste_masks_in_image (roi_heads) and a numpy loop: boxes inside, on and
over the image border, entirely outside, smaller than a pixel, starting left of 0 (int64 truncation toward zero),
no detections, jit and vmap. The footprint (which pixels a mask covers) must be identical; values agree up to float32
rounding of the interpolation sums (1e-6)."""

import functools

import chex
import jax
import numpy as np
import pytest

from segjax.ops import masks as M
from tests.conftest import import_torchvision


def np_paste(masks, boxes, image_size, padding=1):
  """Per detection and pixel: expand the box, truncate it, resize the padded mask with PyTorch's bilinear rule."""
  f32 = np.float32
  h, w = image_size
  out = np.zeros((len(masks), h, w), np.float64)
  for n, (mask, box) in enumerate(zip(masks, np.asarray(boxes, np.float32))):
    m = mask.shape[-1]
    padded = np.pad(np.float64(mask), padding)
    size = m + 2 * padding
    scale = f32(size / m)
    w_half, h_half = (box[2] - box[0]) * f32(0.5) * scale, (box[3] - box[1]) * f32(0.5) * scale
    x_c, y_c = (box[2] + box[0]) * f32(0.5), (box[3] + box[1]) * f32(0.5)
    x1, x2, y1, y2 = (int(v) for v in (x_c - w_half, x_c + w_half, y_c - h_half, y_c + h_half))  # toward 0
    bw, bh = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)

    def src(dst, out_size):  # PyTorch's float32 source index: scale * (dst + 0.5) - 0.5, clamped at 0
      s = max(f32(size) / f32(out_size) * f32(dst + 0.5) - f32(0.5), f32(0))
      i0 = min(int(np.floor(s)), size - 1)
      return i0, min(i0 + 1, size - 1), float(min(max(s - f32(i0), f32(0)), f32(1)))

    for y in range(max(y1, 0), min(y2 + 1, h)):
      r0, r1, ly = src(y - y1, bh)
      for x in range(max(x1, 0), min(x2 + 1, w)):
        c0, c1, lx = src(x - x1, bw)
        out[n, y, x] = ((1 - ly) * ((1 - lx) * padded[r0, c0] + lx * padded[r0, c1])
                        + ly * ((1 - lx) * padded[r1, c0] + lx * padded[r1, c1]))
  return out


def cases(seed, n=12, image_size=(40, 56)):
  rng = np.random.default_rng(seed)
  h, w = image_size
  xy = rng.uniform(-10, max(h, w), (n, 2))
  boxes = np.concatenate([xy, xy + rng.uniform(0.5, 30, (n, 2))], axis=1).astype(np.float32)
  boxes[0] = [0, 0, w, h]  # the whole image
  boxes[1] = [-15.3, -2.7, 8.2, 12.9]  # over the top-left border, truncated toward zero
  boxes[2] = [w - 5.5, h - 3.2, w + 20.0, h + 9.0]  # over the bottom-right border
  boxes[3] = [w + 3.0, 5.0, w + 20.0, 9.0]  # entirely outside
  boxes[4] = [10.2, 11.6, 10.4, 11.7]  # smaller than a pixel
  boxes[5] = [-0.9, -0.4, 6.0, 4.0]  # expanded start in (-1, 0): int64 makes it 0
  masks = rng.uniform(size=(n, 28, 28)).astype(np.float32)
  masks[6] = np.where(masks[6] > 0.5, 1.0, 0.0)  # a binary mask
  masks[7] = rng.normal(size=(28, 28)) * 5  # logits, negative values too
  return masks, boxes


@pytest.mark.parametrize("image_size", [(40, 56), (23, 17)])
def test_paste_matches_torchvision_and_numpy(image_size):
  import_torchvision()
  import torch  # pylint: disable=import-outside-toplevel
  from torchvision.models.detection.roi_heads import paste_masks_in_image  # pylint: disable=import-outside-toplevel
  masks, boxes = cases(image_size[0], image_size=image_size)
  fn = jax.jit(functools.partial(M.paste_masks_in_image, image_size=image_size))
  got = np.asarray(fn(masks, boxes))
  chex.assert_shape(got, (len(masks),) + image_size)
  # torchvision fails on a box entirely outside the image: one of its slices then gets a negative end, which Python
  # counts from the end, and the shapes disagree. (Detections are clipped to the image before pasting, so it never
  # meets one.) Here such a box pastes nothing; those boxes are left out of that comparison.
  touching = np.array([np_paste(masks[n:n + 1], boxes[n:n + 1], image_size).any() for n in range(len(masks))])
  assert not touching[3] and touching.sum() >= len(masks) // 2
  want = np.zeros_like(got)
  want[touching] = paste_masks_in_image(torch.from_numpy(masks[touching])[:, None],
                                        torch.from_numpy(boxes[touching]), image_size)[:, 0].numpy()
  # The footprint is exactly torchvision's (the same integer box); inside it, float32 rounding only.
  np.testing.assert_array_equal(got != 0, want != 0)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(got, np_paste(masks, boxes, image_size), rtol=1e-5, atol=1e-6)
  assert not got[3].any()  # outside the image
  np.testing.assert_array_equal((got > 0.5)[touching], (want > 0.5)[touching])


def test_paste_padding_and_sizes():
  """Another mask size and padding: the expansion factor (M + 2p) / M follows both."""
  import_torchvision()
  import torch  # pylint: disable=import-outside-toplevel
  from torchvision.models.detection.roi_heads import paste_masks_in_image  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(3)
  masks = rng.uniform(size=(4, 14, 14)).astype(np.float32)
  boxes = np.array([[3, 4, 20, 30], [0, 0, 31, 31], [-4, 10, 12, 40], [25.5, 1.5, 26.0, 2.5]], np.float32)
  got = M.paste_masks_in_image(masks, boxes, (32, 32), padding=2)
  want = paste_masks_in_image(torch.from_numpy(masks)[:, None], torch.from_numpy(boxes), (32, 32), padding=2)
  np.testing.assert_allclose(got, want[:, 0].numpy(), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(got, np_paste(masks, boxes, (32, 32), padding=2), rtol=1e-5, atol=1e-6)


def test_no_detections_and_vmap():
  empty = jax.jit(functools.partial(M.paste_masks_in_image, image_size=(8, 9)))(
      np.zeros((0, 28, 28), np.float32), np.zeros((0, 4), np.float32))
  chex.assert_shape(empty, (0, 8, 9))
  (m1, b1), (m2, b2) = cases(5, n=8), cases(6, n=8)
  batched = jax.jit(jax.vmap(functools.partial(M.paste_masks_in_image, image_size=(40, 56))))
  got = np.asarray(batched(np.stack([m1, m2]), np.stack([b1, b2])))
  np.testing.assert_allclose(got[1], np_paste(m2, b2, (40, 56)), rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="square"):
    M.paste_mask(np.zeros((28, 27), np.float32), b1[0], (40, 56))
