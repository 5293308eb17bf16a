"""segjax.ops.roi_align against torchvision (roi_align, MultiScaleRoIAlign, LevelMapper) and a numpy loop over
torchvision's kernel: random boxes inside, at and over the border, the y < -1 / y > H rule at exact edges, empty
box sets, jit, vmap, and gradients (check_grads, and torch autograd of torchvision's roi_align).

Where torchvision's compiled operators do not load (its CUDA wheel beside the CPU torch, see tests/conftest.py),
torchvision.ops.roi_align runs its pure-Python transcription `_roi_align` (called here uncompiled). That
transcription omits the kernel's "sample outside [-1, H] x [-1, W] contributes 0" rule and clamps such samples to
the border instead, so against it only boxes whose samples stay inside that range are compared; the numpy loop
`np_roi_align` covers boxes far over the border. With the operators loaded, the real kernel is compared on all.
"""

import functools
import math
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from segjax.ops import roi_align as R
from tests.conftest import import_torchvision


@pytest.fixture(scope="module")
def tv():
  """(torchvision, roi_align over NCHW tensors with torchvision's signature, whether it is the C++ kernel)."""
  torchvision = import_torchvision()
  from torchvision import extension  # pylint: disable=import-outside-toplevel
  if extension._has_ops():  # pylint: disable=protected-access
    return torchvision, torchvision.ops.roi_align, True
  module = sys.modules["torchvision.ops.roi_align"]
  fallback = getattr(module._roi_align, "__wrapped__", module._roi_align)  # pylint: disable=protected-access

  def roi_align(x, rois, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False):
    oh, ow = (output_size, output_size) if isinstance(output_size, int) else output_size
    return fallback(x, rois, spatial_scale, oh, ow, sampling_ratio, aligned)

  return torchvision, roi_align, False


def np_roi_align(feat, boxes, out, scale, ratio, aligned):
  """torchvision's roi_align CPU kernel as a float32 loop; feat [H, W, C], boxes [K, 4] -> [K, oh, ow, C]."""
  f32 = np.float32
  h, w, c = feat.shape
  oh, ow = (out, out) if isinstance(out, int) else out
  res = np.zeros((len(boxes), oh, ow, c), np.float32)
  off = f32(0.5 if aligned else 0.0)
  for k, (x1, y1, x2, y2) in enumerate(np.asarray(boxes, np.float32)):
    sw, sh = x1 * f32(scale) - off, y1 * f32(scale) - off
    rw, rh = x2 * f32(scale) - off - sw, y2 * f32(scale) - off - sh
    if not aligned:
      rw, rh = max(rw, f32(1)), max(rh, f32(1))
    bh, bw = rh / f32(oh), rw / f32(ow)
    for ph in range(oh):
      for pw in range(ow):
        acc = np.zeros(c, np.float32)
        for iy in range(ratio):
          y = sh + f32(ph) * bh + f32(iy + 0.5) * bh / f32(ratio)
          for ix in range(ratio):
            x = sw + f32(pw) * bw + f32(ix + 0.5) * bw / f32(ratio)
            if not (-1.0 <= y <= h and -1.0 <= x <= w):
              continue
            yy, xx = max(y, f32(0)), max(x, f32(0))
            yl, xl = int(yy), int(xx)
            if yl >= h - 1:
              yl = yh = h - 1
              yy = f32(yl)
            else:
              yh = yl + 1
            if xl >= w - 1:
              xl = xh = w - 1
              xx = f32(xl)
            else:
              xh = xl + 1
            ly, lx = yy - f32(yl), xx - f32(xl)
            hy, hx = f32(1) - ly, f32(1) - lx
            acc += hy * hx * feat[yl, xl] + hy * lx * feat[yl, xh] + ly * hx * feat[yh, xl] + ly * lx * feat[yh, xh]
        res[k, ph, pw] = acc / f32(max(ratio * ratio, 1))
  return res


def random_boxes(rng, n, h, w, scale, margin):
  """Boxes in image coordinates of an (h, w) map at `scale`, reaching `margin` image pixels past every side."""
  ih, iw = h / scale, w / scale
  x = np.sort(rng.uniform(-margin, iw + margin, (n, 2)), axis=1)
  y = np.sort(rng.uniform(-margin, ih + margin, (n, 2)), axis=1)
  return np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1).astype(np.float32)


def nchw(x):
  import torch  # pylint: disable=import-outside-toplevel
  return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(2, 0, 1)[None]))


def with_batch_index(boxes):
  import torch  # pylint: disable=import-outside-toplevel
  return torch.from_numpy(np.concatenate([np.zeros((len(boxes), 1), np.float32), boxes], axis=1))


jit_roi_align = jax.jit(R.roi_align, static_argnames=("output_size", "spatial_scale", "sampling_ratio", "aligned"))


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("scale", [1.0, 0.25])
def test_roi_align_matches_torchvision_and_numpy(tv, aligned, scale):
  _, tv_roi_align, is_kernel = tv
  rng = np.random.default_rng(int(scale * 8) + aligned)
  feat = rng.normal(size=(11, 14, 3)).astype(np.float32)
  # Inside with a 0.5 px margin to spare: no sample leaves [-1, H], where the Python fallback differs.
  inside = random_boxes(rng, 12, 11, 14, scale, margin=0.0)
  inside[0] = [0, 0, 14 / scale, 11 / scale]  # the whole map, to the border
  inside[1] = [3 / scale, 2 / scale, 3 / scale, 2 / scale]  # a point
  border = random_boxes(rng, 12, 11, 14, scale, margin=12.0 / scale)  # well over every side
  boxes = np.concatenate([inside, border])
  got = np.asarray(jit_roi_align(feat, boxes, output_size=5, spatial_scale=scale, sampling_ratio=2,
                                 aligned=aligned))
  chex.assert_shape(got, (24, 5, 5, 3))
  np.testing.assert_allclose(got, np_roi_align(feat, boxes, 5, scale, 2, aligned), rtol=1e-5, atol=1e-5)
  compared = boxes if is_kernel else inside
  want = tv_roi_align(nchw(feat), with_batch_index(compared), 5, scale, 2, aligned).numpy().transpose(0, 2, 3, 1)
  np.testing.assert_allclose(got[:len(compared)], want, rtol=1e-5, atol=1e-5)


def test_out_of_range_rule_at_exact_edges():
  """Samples exactly at y = -1 and y = H count (clamped to the border row); just beyond them they are 0."""
  feat = np.arange(4 * 6 * 2, dtype=np.float32).reshape(4, 6, 2)  # H = 4
  # aligned, scale 1, one bin of 2 x 2 samples at start + (0.25, 0.75) * size, start = coordinate - 0.5:
  # x 1.5..5.5 samples columns 2 and 4; y -3..7 samples y = -1 (counts, row 0) and y = 4 = H (counts, row 3).
  # Shifted by -0.1 the first sample is at -1.1 (0); by +0.1 the second is at 4.1 (0). All values are exact.
  boxes = np.array([[1.5, -3.0, 5.5, 7.0], [1.5, -3.1, 5.5, 6.9], [1.5, -2.9, 5.5, 7.1]], np.float32)
  got = np.asarray(jit_roi_align(feat, boxes, output_size=1, spatial_scale=1.0, sampling_ratio=2, aligned=True))
  np.testing.assert_allclose(got, np_roi_align(feat, boxes, 1, 1.0, 2, True), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(got[0, 0, 0], (feat[0, 2] + feat[0, 4] + feat[3, 2] + feat[3, 4]) / 4, rtol=1e-6)
  np.testing.assert_allclose(got[1, 0, 0], (feat[3, 2] + feat[3, 4]) / 4, rtol=1e-5)  # 3.9 -> row 3 (clamped)
  np.testing.assert_allclose(got[2, 0, 0], (feat[0, 2] + feat[0, 4]) / 4, rtol=1e-5)  # -0.9 -> row 0 (clamped)


def test_empty_boxes_and_vmap(tv):
  del tv
  rng = np.random.default_rng(3)
  feats = rng.normal(size=(2, 9, 10, 4)).astype(np.float32)
  boxes = np.stack([random_boxes(rng, 6, 9, 10, 0.5, margin=4.0) for _ in range(2)])
  fn = jax.jit(jax.vmap(functools.partial(R.roi_align, output_size=(3, 4), spatial_scale=0.5)))
  got = np.asarray(fn(feats, boxes))
  chex.assert_shape(got, (2, 6, 3, 4, 4))
  for k in range(2):
    np.testing.assert_allclose(got[k], np_roi_align(feats[k], boxes[k], (3, 4), 0.5, 2, True), rtol=1e-5, atol=1e-5)
  empty = jit_roi_align(feats[0], np.zeros((0, 4), np.float32), output_size=7, spatial_scale=1.0,
                        sampling_ratio=2, aligned=True)
  chex.assert_shape(empty, (0, 7, 7, 4))
  with pytest.raises(ValueError, match="sampling_ratio"):
    R.roi_align(feats[0], boxes[0], 7, sampling_ratio=-1)


def test_gradients(tv):
  import torch  # pylint: disable=import-outside-toplevel
  _, tv_roi_align, _ = tv
  rng = np.random.default_rng(4)
  feat = rng.normal(size=(6, 7, 2))
  boxes = np.array([[0.3, 0.7, 5.2, 4.9], [-2.0, 1.0, 3.0, 8.5], [2.2, 2.1, 2.9, 3.4]], np.float32)
  f = functools.partial(R.roi_align, boxes=boxes, output_size=2, spatial_scale=1.0, sampling_ratio=2)
  check_grads(jax.jit(f), (jnp.asarray(feat, jnp.float32),), order=1, modes=("rev",), atol=1e-2, rtol=1e-2)
  # The gradient equals torch autograd through torchvision's roi_align for a random cotangent (boxes inside).
  inside = boxes[[0, 2]]
  cot = rng.normal(size=(2, 2, 2, 2)).astype(np.float32)
  g = jax.jit(jax.grad(lambda x: jnp.sum(R.roi_align(x, inside, 2) * cot)))(jnp.asarray(feat, jnp.float32))
  x = nchw(feat.astype(np.float32)).requires_grad_(True)
  out = tv_roi_align(x, with_batch_index(inside), 2, 1.0, 2, True)
  (out * torch.from_numpy(cot.transpose(0, 3, 1, 2))).sum().backward()
  np.testing.assert_allclose(np.asarray(g), x.grad.numpy()[0].transpose(1, 2, 0), rtol=1e-5, atol=1e-6)


def test_level_mapper_matches_torchvision(tv):
  import torch  # pylint: disable=import-outside-toplevel
  from torchvision.ops.poolers import LevelMapper  # pylint: disable=import-outside-toplevel
  del tv
  rng = np.random.default_rng(5)
  sides = np.concatenate([rng.uniform(0, 900, 200), [0, 1, 56, 111.99, 112, 224, 448, 448.01, 896, 2000]])
  x1 = rng.uniform(0, 50, len(sides))
  aspect = rng.uniform(0.3, 3.0, len(sides))
  x1[-10:], aspect[-10:] = 8.0, 1.0  # the boundary sides as exact squares
  w, h = sides * np.sqrt(aspect), sides / np.sqrt(aspect)
  boxes = np.stack([x1, x1, x1 + w, x1 + h], axis=1).astype(np.float32)
  want = LevelMapper(2, 5)(torch.from_numpy(boxes)[None]).numpy()
  got = np.asarray(jax.jit(R.fpn_levels)(boxes))
  np.testing.assert_array_equal(got, want)
  ref = [min(max(math.floor(4 + math.log2(math.sqrt(max(a, 1e-300)) / 224) + 1e-6), 2), 5) - 2
         for a in np.float64(w.astype(np.float32)) * np.float64(h.astype(np.float32))]
  np.testing.assert_array_equal(got, ref)
  np.testing.assert_array_equal(got[-9:-1], [0, 0, 0, 1, 2, 3, 3, 3])  # 112, 224, 448: the upper level


def test_multiscale_roi_align_matches_torchvision(tv, monkeypatch):
  import torch  # pylint: disable=import-outside-toplevel
  torchvision, tv_roi_align, is_kernel = tv
  if not is_kernel:  # the pooler would torch.compile the fallback: call it uncompiled
    monkeypatch.setattr(torchvision.ops.poolers, "roi_align", tv_roi_align)
  rng = np.random.default_rng(6)
  image_size = (470, 500)  # not a multiple of 32: feature sizes round up, scales are still powers of 2
  sizes = [(-(-470 // s), -(-500 // s)) for s in (4, 8, 16, 32)]
  feats = [rng.normal(size=(h, w, 3)).astype(np.float32) for h, w in sizes]
  boxes = random_boxes(rng, 40, 470, 500, 1.0, margin=0.0)
  boxes[:4] = [[0, 0, 500, 470], [10, 10, 122, 122], [5, 5, 229, 229], [3.0, 4.0, 3.5, 4.25]]
  pooler = torchvision.ops.MultiScaleRoIAlign(["0", "1", "2", "3"], output_size=7, sampling_ratio=2)
  x = {str(k): nchw(f) for k, f in enumerate(feats)}
  x["pool"] = torch.zeros(1, 3, 4, 5)  # Mask R-CNN passes P6 too; the pooler ignores it
  want = pooler(x, [torch.from_numpy(boxes)], [image_size]).numpy().transpose(0, 2, 3, 1)
  # torchvision's pooler uses aligned=False.
  fn = jax.jit(functools.partial(R.multiscale_roi_align, image_size=image_size, output_size=7, aligned=False))
  got = np.asarray(fn(feats, boxes))
  # Under jit XLA may round the sample positions differently (e.g. / 7 as * (1/7)): 1 ulp of a coordinate near
  # 80 is 8e-6 px, times feature slopes of a few units per pixel here.
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
  # aligned=True (this project's default) against the numpy loop on each box's level.
  levels = np.asarray(R.fpn_levels(boxes, 2, 5))
  assert set(levels.tolist()) == {0, 1, 2, 3}
  got = np.asarray(jax.jit(functools.partial(R.multiscale_roi_align, image_size=image_size))(feats, boxes))
  for k in range(0, 40, 3):
    level = levels[k]
    want_k = np_roi_align(feats[level], boxes[k:k + 1], 7, 1 / 4 / 2 ** level, 2, True)
    np.testing.assert_allclose(got[k:k + 1], want_k, rtol=1e-5, atol=1e-4)
  # Empty and batched (vmap over images).
  chex.assert_shape(fn(feats, np.zeros((0, 4), np.float32)), (0, 7, 7, 3))
  batched = jax.jit(jax.vmap(functools.partial(R.multiscale_roi_align, image_size=image_size)))
  two = batched([np.stack([f, f * 2]) for f in feats], np.stack([boxes[:5], boxes[5:10]]))
  np.testing.assert_allclose(two[1], 2 * got[5:10], rtol=1e-5, atol=1e-5)
