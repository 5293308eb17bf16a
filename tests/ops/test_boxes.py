"""segjax.ops.boxes against torchvision (box_iou, BoxCoder, clip_boxes_to_image, remove_small_boxes) and numpy
loops, under jit and vmap, with empty inputs, ties (identical boxes) and boxes at and over the image border."""

import functools

import chex
import jax
import numpy as np
import pytest

from segjax.ops import boxes as B
from tests.conftest import import_torchvision


@pytest.fixture(scope="module")
def tv():
  return import_torchvision()


def random_boxes(rng, n, lo=-20.0, hi=120.0, max_size=60.0):
  """Boxes partly outside a 100 x 100 image, some of zero width or height, and repeats of earlier boxes."""
  xy = rng.uniform(lo, hi, (n, 2))
  wh = rng.uniform(0.0, max_size, (n, 2))
  wh[rng.uniform(size=(n, 2)) < 0.1] = 0.0
  boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
  if n > 2:
    boxes[n // 2] = boxes[0]  # an exact duplicate: IoU 1 (or NaN if it has zero area)
  return boxes


def np_box_iou(b1, b2):
  out = np.zeros((len(b1), len(b2)), np.float64)
  for i, p in enumerate(np.float64(b1)):
    for j, q in enumerate(np.float64(b2)):
      iw = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
      ih = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
      union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - iw * ih
      out[i, j] = iw * ih / union if union > 0 else np.nan
  return out


def np_encode(ref, prop, weights):
  out = np.zeros((len(ref), 4))
  wx, wy, ww, wh = weights
  for k, (g, p) in enumerate(zip(np.float64(ref), np.float64(prop))):
    pw, ph, gw, gh = p[2] - p[0], p[3] - p[1], g[2] - g[0], g[3] - g[1]
    out[k] = [wx * ((g[0] + gw / 2) - (p[0] + pw / 2)) / pw, wy * ((g[1] + gh / 2) - (p[1] + ph / 2)) / ph,
              ww * np.log(gw / pw), wh * np.log(gh / ph)]
  return out


def np_decode(codes, boxes, weights, clip=B.BBOX_XFORM_CLIP):
  out = np.zeros((len(codes), 4))
  wx, wy, ww, wh = weights
  for k, (c, b) in enumerate(zip(np.float64(codes), np.float64(boxes))):
    bw, bh = b[2] - b[0], b[3] - b[1]
    cx, cy = b[0] + bw / 2 + c[0] / wx * bw, b[1] + bh / 2 + c[1] / wy * bh
    w, h = np.exp(min(c[2] / ww, clip)) * bw, np.exp(min(c[3] / wh, clip)) * bh
    out[k] = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
  return out


def test_box_iou_matches_torchvision_and_numpy(tv):
  import torch  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  b1, b2 = random_boxes(rng, 17), random_boxes(rng, 23)
  b2[:3] = b1[:3]  # identical pairs across the two sets
  got = np.asarray(jax.jit(B.box_iou)(b1, b2))
  want = tv.ops.box_iou(torch.from_numpy(b1), torch.from_numpy(b2)).numpy()
  chex.assert_shape(got, (17, 23))
  # Same float32 operations in the same order: equal, NaN (0/0 of two empty boxes) included.
  np.testing.assert_array_equal(got, want)
  np.testing.assert_allclose(got, np_box_iou(b1, b2), rtol=1e-5, atol=1e-6)
  assert np.isnan(got).any() and (got[~np.isnan(got)] >= 0).all() and (got[~np.isnan(got)] <= 1).all()


def test_box_iou_empty_and_vmap(tv):
  import torch  # pylint: disable=import-outside-toplevel
  empty = np.zeros((0, 4), np.float32)
  some = random_boxes(np.random.default_rng(1), 5)
  for a, b in ((empty, some), (some, empty), (empty, empty)):
    got = jax.jit(B.box_iou)(a, b)
    chex.assert_shape(got, (len(a), len(b)))
    assert tv.ops.box_iou(torch.from_numpy(a), torch.from_numpy(b)).shape == got.shape
  batch1 = np.stack([random_boxes(np.random.default_rng(s), 6) for s in range(3)])
  batch2 = np.stack([random_boxes(np.random.default_rng(s + 10), 4) for s in range(3)])
  got = jax.jit(jax.vmap(B.box_iou))(batch1, batch2)
  for k in range(3):
    np.testing.assert_array_equal(got[k], B.box_iou(batch1[k], batch2[k]))


@pytest.mark.parametrize("weights", [B.RPN_WEIGHTS, B.BOX_HEAD_WEIGHTS])
def test_encode_matches_boxcoder(tv, weights):
  import torch  # pylint: disable=import-outside-toplevel
  from torchvision.models.detection._utils import BoxCoder  # pylint: disable=import-outside-toplevel
  del tv
  rng = np.random.default_rng(2)
  proposals = random_boxes(rng, 40, max_size=60.0)
  proposals[:, 2:] += 1.0  # encoding needs positive sizes
  gt = random_boxes(rng, 40)
  gt[:, 2:] += 1.0
  gt[5] = proposals[5]  # a perfect proposal: targets exactly 0
  got = np.asarray(jax.jit(functools.partial(B.encode_boxes, weights=weights))(gt, proposals))
  want = BoxCoder(weights).encode_single(torch.from_numpy(gt), torch.from_numpy(proposals)).numpy()
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(got, np_encode(gt, proposals, weights), rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(got[5], 0.0)
  chex.assert_shape(B.encode_boxes(gt[:0], proposals[:0], weights), (0, 4))


@pytest.mark.parametrize("weights", [B.RPN_WEIGHTS, B.BOX_HEAD_WEIGHTS])
def test_decode_matches_boxcoder_per_class(tv, weights):
  import torch  # pylint: disable=import-outside-toplevel
  from torchvision.models.detection._utils import BoxCoder  # pylint: disable=import-outside-toplevel
  del tv
  rng = np.random.default_rng(3)
  boxes = random_boxes(rng, 30)
  codes = (rng.normal(size=(30, 5 * 4)) * 2.0).astype(np.float32)
  codes[0, 2::4] = 100.0  # far past bbox_xform_clip: the clamp keeps the boxes finite
  got = jax.jit(functools.partial(B.decode_boxes, weights=weights))(codes.reshape(30, 5, 4), boxes[:, None])
  want = BoxCoder(weights).decode_single(torch.from_numpy(codes), torch.from_numpy(boxes)).numpy()
  # Float32 exp differs between libraries in the last bit; boxes reach ~1e3 pixels.
  np.testing.assert_allclose(np.asarray(got).reshape(30, 20), want, rtol=1e-6, atol=1e-4)
  ref = np_decode(codes.reshape(-1, 4), np.repeat(boxes, 5, axis=0), weights)
  np.testing.assert_allclose(np.asarray(got).reshape(-1, 4), ref, rtol=1e-5, atol=1e-3)
  assert np.isfinite(got).all()
  # Round trip on boxes of positive size.
  boxes[:, 2:] += 1.0
  target = random_boxes(rng, 30) + np.float32([0, 0, 1, 1])
  enc = B.encode_boxes(target, boxes, weights)
  np.testing.assert_allclose(B.decode_boxes(enc, boxes, weights), target, rtol=1e-5, atol=1e-3)


def test_decode_vmap_and_empty():
  rng = np.random.default_rng(4)
  boxes = np.stack([random_boxes(rng, 7) for _ in range(2)])
  codes = rng.normal(size=(2, 7, 4)).astype(np.float32)
  got = jax.jit(jax.vmap(B.decode_boxes))(codes, boxes)
  for k in range(2):
    # jit fuses exp into a vectorised loop whose float32 exp may differ from eager mode's in the last bit.
    np.testing.assert_allclose(got[k], B.decode_boxes(codes[k], boxes[k]), rtol=1e-6, atol=1e-5)
  chex.assert_shape(B.decode_boxes(np.zeros((0, 4), np.float32), np.zeros((0, 4), np.float32)), (0, 4))


def test_clip_and_small_boxes_match_torchvision(tv):
  import torch  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(5)
  boxes = random_boxes(rng, 50)  # many cross the 100 x 100 border or lie outside it
  size = (80, 100)  # (height, width)
  got = jax.jit(B.clip_boxes_to_image, static_argnums=1)(boxes, size)
  want = tv.ops.clip_boxes_to_image(torch.from_numpy(boxes), size).numpy()
  np.testing.assert_array_equal(got, want)
  ref = boxes.copy()
  for k in range(len(ref)):
    ref[k] = [min(max(ref[k, 0], 0), 100), min(max(ref[k, 1], 0), 80), min(max(ref[k, 2], 0), 100),
              min(max(ref[k, 3], 0), 80)]
  np.testing.assert_array_equal(got, ref)
  # Per-image sizes under vmap (a traced image size).
  sizes = np.array([[80, 100], [50, 60]], np.int32)
  batched = jax.jit(jax.vmap(B.clip_boxes_to_image))(np.stack([boxes, boxes]), sizes)
  np.testing.assert_array_equal(batched[1], tv.ops.clip_boxes_to_image(torch.from_numpy(boxes), (50, 60)).numpy())

  for min_size in (0.0, 1e-3, 5.0):
    keep = np.asarray(jax.jit(B.small_boxes_mask, static_argnums=1)(got, min_size))
    want_idx = tv.ops.remove_small_boxes(torch.from_numpy(np.array(got)), min_size).numpy()
    np.testing.assert_array_equal(np.flatnonzero(keep), want_idx)
  chex.assert_shape(B.small_boxes_mask(np.zeros((0, 4), np.float32), 1.0), (0,))
