"""segjax.ops.nms against torchvision (nms, batched_nms) and numpy loops: random boxes with tied scores and
duplicate boxes, IoU exactly at the threshold, empty and all-padded inputs, truncation to max_output, jit, vmap.

torchvision's compiled operators load only where its wheel matches torch (PyPI's CUDA wheel beside the CPU torch
does not, see tests/conftest.py). Where they do not load, `torchvision.ops.nms` is replaced by `np_nms_kernel`,
a line-by-line numpy transcription of its CPU kernel (torchvision/csrc/ops/cpu/nms_kernel.cpp), so
torchvision's own batched_nms code still runs; `torch_greedy` is a second reference built from torch's stable sort
and torchvision's box_iou. Where the operators load, the real kernel is compared as well.
"""

import functools

import chex
import jax
import numpy as np
import pytest

from segjax.ops import nms as N
from tests.conftest import import_torchvision


def np_nms_kernel(boxes, scores, iou_threshold):
  """torchvision's CPU nms kernel in numpy float32: stable descending sort, IoU > threshold as a double."""
  boxes, scores = np.asarray(boxes, np.float32), np.asarray(scores, np.float32)
  if boxes.size == 0:
    return np.zeros((0,), np.int64)
  x1, y1, x2, y2 = boxes.T
  areas = (x2 - x1) * (y2 - y1)
  order = np.argsort(-scores, kind="stable")
  with np.errstate(invalid="ignore"):  # two zero-area boxes: 0/0 = NaN, as in the kernel
    suppressed = np.zeros(len(boxes), bool)
    keep = []
    for a, i in enumerate(order):
      if suppressed[i]:
        continue
      keep.append(i)
      for j in order[a + 1:]:
        if suppressed[j]:
          continue
        w = max(np.float32(0), min(x2[i], x2[j]) - max(x1[i], x1[j]))
        h = max(np.float32(0), min(y2[i], y2[j]) - max(y1[i], y1[j]))
        inter = np.float32(w * h)
        ovr = np.float32(inter / np.float32(areas[i] + areas[j] - inter))
        if float(ovr) > iou_threshold:  # C++ promotes the float IoU to double for the comparison
          suppressed[j] = True
  return np.asarray(keep, np.int64)


def np_batched(boxes, scores, idxs, thr):
  """Per-category NMS loop (torchvision's _batched_nms_vanilla in numpy), merged by descending score, ties in
  index order (the order of one NMS over all boxes; the vanilla path's unstable torch sort leaves it open)."""
  keep = []
  for c in np.unique(idxs):
    members = np.flatnonzero(idxs == c)
    keep.extend(members[np_nms_kernel(boxes[members], scores[members], thr)])
  keep = np.sort(np.asarray(keep, np.int64))
  return keep[np.argsort(-scores[keep], kind="stable")]


@pytest.fixture(scope="module")
def tv():
  torchvision = import_torchvision()
  from torchvision import extension  # pylint: disable=import-outside-toplevel
  return torchvision, extension._has_ops()  # pylint: disable=protected-access


@pytest.fixture
def tv_nms(tv, monkeypatch):
  """(nms, batched_nms) of torchvision over numpy arrays; the kernel transcription stands in for its C++ op."""
  import torch  # pylint: disable=import-outside-toplevel
  torchvision, has_ops = tv
  if not has_ops:
    kernel = lambda b, s, t: torch.from_numpy(np_nms_kernel(b.numpy(), s.numpy(), t))
    monkeypatch.setattr(torchvision.ops.boxes, "nms", kernel)
  ops = torchvision.ops.boxes
  t = torch.from_numpy
  return (lambda b, s, thr: ops.nms(t(b), t(s), thr).numpy(),
          lambda b, s, i, thr: ops.batched_nms(t(b), t(s), t(i), thr).numpy())


def torch_greedy(torchvision, boxes, scores, thr):
  """Greedy NMS from torch.sort(stable=True) and torchvision.ops.box_iou: independent of np_nms_kernel."""
  import torch  # pylint: disable=import-outside-toplevel
  b, s = torch.from_numpy(boxes), torch.from_numpy(scores)
  order = torch.sort(s, descending=True, stable=True)[1]
  iou = torchvision.ops.box_iou(b, b).double()
  alive, keep = torch.ones(len(b), dtype=torch.bool), []
  for i in order.tolist():
    if alive[i]:
      keep.append(i)
      alive &= ~(iou[i] > thr)
  return np.asarray(keep, np.int64)


def random_case(seed, n, num_levels=6):
  """Clipped boxes in a 64 x 64 image, many overlapping; scores on a few levels (ties), exact duplicate boxes."""
  rng = np.random.default_rng(seed)
  xy = rng.uniform(-8, 64, (n, 2))
  boxes = np.clip(np.concatenate([xy, xy + rng.uniform(1, 30, (n, 2))], 1), 0, 64).astype(np.float32)
  boxes[n // 3] = boxes[n // 4]
  scores = (rng.integers(0, num_levels, n) / num_levels).astype(np.float32)
  return boxes, scores


def run_nms(boxes, scores, thr, max_output, valid=None):
  fn = jax.jit(functools.partial(N.nms, iou_threshold=thr, max_output=max_output))
  idx, kept = fn(boxes, scores, valid=valid)
  idx, kept = np.asarray(idx), np.asarray(kept)
  np.testing.assert_array_equal(kept, idx >= 0)
  return idx[kept]


@pytest.mark.parametrize("thr", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("n", [5, 150])
def test_nms_matches_torchvision_with_ties(tv, tv_nms, thr, n):
  boxes, scores = random_case(n + int(10 * thr), n)
  want = tv_nms[0](boxes, scores, thr)
  np.testing.assert_array_equal(run_nms(boxes, scores, thr, n), want)
  np.testing.assert_array_equal(want, np_nms_kernel(boxes, scores, thr))
  np.testing.assert_array_equal(want, torch_greedy(tv[0], boxes, scores, thr))
  if n > 16:  # torch's default (unstable) CPU sort reorders ties at this size: the tie rule is really exercised
    import torch  # pylint: disable=import-outside-toplevel
    unstable = torch.from_numpy(scores).sort(descending=True)[1].numpy()
    assert (unstable != np.argsort(-scores, kind="stable")).any()


def test_tie_rule_lower_index_wins():
  # Three identical boxes with one score, and a fourth overlapping box with the same score further back.
  boxes = np.array([[10, 10, 20, 20], [0, 0, 4, 4], [10, 10, 20, 20], [11, 10, 21, 20], [10, 10, 20, 20]],
                   np.float32)
  scores = np.full(5, 0.5, np.float32)
  np.testing.assert_array_equal(run_nms(boxes, scores, 0.5, 5), [0, 1])
  np.testing.assert_array_equal(np_nms_kernel(boxes, scores, 0.5), [0, 1])


def test_threshold_is_strict_and_compared_as_a_double(tv, tv_nms):
  # IoU exactly 0.5 is not above 0.5: both kept.
  boxes = np.array([[0, 0, 2, 1], [0, 0, 1, 1]], np.float32)
  scores = np.array([0.9, 0.8], np.float32)
  np.testing.assert_array_equal(run_nms(boxes, scores, 0.5, 2), [0, 1])
  np.testing.assert_array_equal(tv_nms[0](boxes, scores, 0.5), [0, 1])
  # IoU 3/10 in float32 is 0.30000001 > 0.3 (as a double): suppressed in torchvision, so here too, although the
  # float32 threshold 0.3 also rounds to 0.30000001.
  boxes = np.array([[0, 0, 10, 1], [0, 0, 3, 1]], np.float32)
  np.testing.assert_array_equal(tv_nms[0](boxes, scores, 0.3), [0])
  np.testing.assert_array_equal(run_nms(boxes, scores, 0.3, 2), [0])
  np.testing.assert_array_equal(torch_greedy(tv[0], boxes, scores, 0.3), [0])


def test_degenerate_boxes_never_suppress(tv_nms):
  # Zero-area duplicates: IoU 0/0 = NaN, never above the threshold, so every copy survives (as in torchvision).
  boxes = np.array([[5, 5, 5, 9], [5, 5, 5, 9], [0, 0, 10, 10]], np.float32)
  scores = np.array([0.9, 0.8, 0.7], np.float32)
  np.testing.assert_array_equal(run_nms(boxes, scores, 0.5, 3), tv_nms[0](boxes, scores, 0.5))
  np.testing.assert_array_equal(run_nms(boxes, scores, 0.5, 3), [0, 1, 2])


def test_max_output_truncates_and_pads():
  boxes, scores = random_case(3, 80)
  want = np_nms_kernel(boxes, scores, 0.5)
  assert len(want) > 10
  np.testing.assert_array_equal(run_nms(boxes, scores, 0.5, 10), want[:10])
  idx, kept = jax.jit(N.nms, static_argnums=(2, 3))(boxes, scores, 0.5, len(want) + 7)
  np.testing.assert_array_equal(np.asarray(idx)[len(want):], -1)
  assert int(kept.sum()) == len(want)


def test_empty_and_all_padded_inputs(tv_nms):
  empty, no_scores = np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)
  assert len(tv_nms[0](empty, no_scores, 0.5)) == 0
  idx, kept = jax.jit(functools.partial(N.nms, iou_threshold=0.5, max_output=4))(empty, no_scores)
  chex.assert_shape([idx, kept], (4,))
  np.testing.assert_array_equal(idx, -1)
  assert not kept.any()
  boxes, scores = random_case(4, 12)
  idx, kept = N.nms(boxes, scores, 0.5, 6, valid=np.zeros(12, bool))
  np.testing.assert_array_equal(idx, -1)
  assert not kept.any()


def test_padded_equals_unpadded_under_vmap():
  """A batch of images with different numbers of real boxes: padding (even with top scores) changes nothing."""
  cases = [random_case(10 + k, 40) for k in range(3)]
  counts = [40, 25, 0]
  boxes = np.stack([c[0] for c in cases])
  scores = np.stack([c[1] for c in cases])
  valid = np.arange(40)[None, :] < np.asarray(counts)[:, None]
  scores = np.where(valid, scores, 2.0).astype(np.float32)  # padding that would win every sort if it counted
  fn = jax.jit(jax.vmap(functools.partial(N.nms, iou_threshold=0.6, max_output=40)))
  idx, kept = fn(boxes, scores, valid=valid)
  for k, c in enumerate(counts):
    want = np_nms_kernel(boxes[k, :c], scores[k, :c], 0.6)
    np.testing.assert_array_equal(np.asarray(idx[k])[np.asarray(kept[k])], want)


@pytest.mark.parametrize("n", [60, 300])
def test_batched_nms_matches_torchvision(tv_nms, n):
  boxes, scores = random_case(20 + n, n)
  idxs = np.random.default_rng(n).integers(0, 4, n).astype(np.int64)
  want = tv_nms[1](boxes, scores, idxs, 0.5)  # the coordinate trick (n * 4 <= 4000 on the CPU)
  fn = jax.jit(functools.partial(N.batched_nms, iou_threshold=0.5, max_output=n))
  idx, kept = fn(boxes, scores, idxs)
  np.testing.assert_array_equal(np.asarray(idx)[np.asarray(kept)], want)
  np.testing.assert_array_equal(want, np_batched(boxes, scores, idxs, 0.5))
  # Categories do not suppress each other: the same boxes in one category keep fewer.
  assert len(want) > len(np_nms_kernel(boxes, scores, 0.5))


def test_batched_nms_padding_and_vmap():
  cases = [random_case(30 + k, 50) for k in range(2)]
  boxes = np.stack([c[0] for c in cases])
  scores = np.stack([c[1] for c in cases])
  idxs = np.random.default_rng(7).integers(0, 3, (2, 50))
  valid = np.arange(50)[None, :] < np.array([[50], [31]])
  boxes[1, 31:] = 1e4  # padded boxes far away must not change the category offset
  fn = jax.jit(jax.vmap(functools.partial(N.batched_nms, iou_threshold=0.5, max_output=50)))
  idx, kept = fn(boxes, scores, idxs, valid=valid)
  for k, c in enumerate((50, 31)):
    want = np_batched(boxes[k, :c], scores[k, :c], idxs[k, :c], 0.5)
    np.testing.assert_array_equal(np.asarray(idx[k])[np.asarray(kept[k])], want)
  idx, kept = N.batched_nms(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0,), np.int32),
                            0.5, 3)
  np.testing.assert_array_equal(idx, -1)
