"""segjax.models.detection.targets against torchvision's training code: Matcher (ties, thresholds, low-quality
matches), RegionProposalNetwork.assign_targets_to_anchors + BoxCoder, RoIHeads.select_training_samples (given the
same sampled masks) and project_masks_on_boxes (through torchvision's python RoIAlign). The sampler is checked for
torchvision's counts, for being a function of its key (same key, same sample; another key, another sample) and
for uniformity by frequencies over many keys. Padded ground truth and proposals sit between real ones; images
without any ground truth; jit and vmap.
"""

import functools
import sys

import jax
import numpy as np
import pytest

from segjax.models.detection import targets as T
from tests.conftest import import_torchvision


@pytest.fixture(scope="module")
def tv():
  torchvision = import_torchvision()
  import torchvision.models.detection.roi_heads  # pylint: disable=import-outside-toplevel,unused-import
  import torchvision.models.detection.rpn  # pylint: disable=import-outside-toplevel,unused-import
  return torchvision


def python_roi_align(sampling_ratio=None):
  """torchvision.ops.roi_align's signature over torchvision's own python RoIAlign (its C++ op may not load);
  sampling_ratio, when given, replaces the caller's (project_masks_on_boxes passes none: -1, adaptive)."""
  fallback = sys.modules["torchvision.ops.roi_align"]._roi_align  # pylint: disable=protected-access
  fallback = getattr(fallback, "__wrapped__", fallback)

  def roi_align(x, rois, output_size, spatial_scale=1.0, ratio=-1, aligned=False):
    oh, ow = (output_size, output_size) if isinstance(output_size, int) else output_size
    return fallback(x, rois, spatial_scale, oh, ow, ratio if sampling_ratio is None else sampling_ratio, aligned)

  return roi_align


def int_boxes(rng, n, size=48, max_side=24):
  """Boxes on the integer grid of a size x size image (so IoUs tie exactly), every side >= 1, a few repeats."""
  xy = rng.integers(0, size - 2, (n, 2))
  wh = rng.integers(1, max_side, (n, 2))
  boxes = np.concatenate([xy, np.minimum(xy + wh, size)], axis=1).astype(np.float32)
  if n > 4:
    boxes[n // 2] = boxes[1]
  return boxes


def t(x):
  import torch  # pylint: disable=import-outside-toplevel
  return torch.from_numpy(np.ascontiguousarray(x))


def compact_index(valid):
  """Position of each row among the valid rows (what torchvision, which sees only those, calls it)."""
  return np.cumsum(np.asarray(valid, bool)) - 1


# ---------------------------------------------------------------------------------------------------- match


@pytest.mark.parametrize("high,low,allow", [(0.7, 0.3, True), (0.7, 0.3, False), (0.5, 0.5, False)])
def test_match_equals_torchvision_matcher(tv, high, low, allow):
  from torchvision.models.detection._utils import Matcher  # pylint: disable=import-outside-toplevel
  fn = jax.jit(functools.partial(T.match, high=high, low=low, allow_low_quality=allow))
  rng = np.random.default_rng(0)
  levels = np.float32([0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0])  # exact thresholds and many ties
  for _ in range(6):
    iou = rng.choice(levels, (6, 40)).astype(np.float32)
    valid = rng.uniform(size=6) < 0.6
    valid[rng.integers(6)] = True
    got = np.asarray(fn(iou, valid))
    want = Matcher(high, low, allow)(t(iou[valid])).numpy()
    np.testing.assert_array_equal(got, np.where(want >= 0, np.flatnonzero(valid)[np.maximum(want, 0)], want))


def test_match_low_quality_keeps_every_tie_and_ignores_padding():
  iou = np.float32([[0.2, 0.2, 0.1, 0.0, 0.0],   # gt 0: best 0.2 at predictions 0 and 1 (a tie: both kept)
                    [0.1, 0.25, 0.0, 0.0, 0.0],  # gt 1: best 0.25 at prediction 1, whose best gt it is
                    [0.9, 0.9, 0.9, 0.9, 0.9],   # padding: would win everything if it counted
                    [0.0, 0.0, 0.0, 0.0, 0.8]])  # gt 3: a regular match at prediction 4
  valid = np.array([True, True, False, True])
  np.testing.assert_array_equal(T.match(iou, valid, 0.7, 0.3, allow_low_quality=False), [-1, -1, -1, -1, 3])
  np.testing.assert_array_equal(T.match(iou, valid, 0.7, 0.3, allow_low_quality=True), [0, 1, -1, -1, 3])


@pytest.mark.parametrize("allow", [True, False])
def test_match_without_ground_truth_is_all_background(allow):
  iou = np.full((3, 7), 0.9, np.float32)
  np.testing.assert_array_equal(T.match(iou, np.zeros(3, bool), 0.7, 0.3, allow), np.full(7, -1))
  np.testing.assert_array_equal(T.match(np.zeros((0, 7), np.float32), np.zeros(0, bool), 0.7, 0.3, allow),
                                np.full(7, -1))


# ---------------------------------------------------------------------------------------------------- sampler


@pytest.mark.parametrize("num_samples,fraction", [(256, 0.5), (512, 0.25), (16, 0.25)])
def test_sampler_counts_are_torchvision_s(num_samples, fraction):
  rng = np.random.default_rng(1)
  fn = jax.jit(jax.vmap(functools.partial(T.sample_balanced, num_samples=num_samples, positive_fraction=fraction)))
  cases = [(0, 0), (0, 300), (300, 0), (5, 295), (150, 150), (200, 60), (40, 10), (3, 2)]
  labels = np.full((len(cases), 300), -1, np.int32)
  for row, (n_pos, n_neg) in zip(labels, cases):
    row[:n_pos] = rng.integers(1, 4, n_pos)  # class ids count as positives (labels >= 1)
    row[n_pos:n_pos + n_neg] = 0
    rng.shuffle(row)
  pos, neg = map(np.asarray, fn(T.image_keys(jax.random.key(3), len(cases)), labels))
  for (n_pos, n_neg), lab, p, n in zip(cases, labels, pos, neg):
    want_pos = min(n_pos, int(num_samples * fraction))
    assert p.sum() == want_pos and n.sum() == min(n_neg, num_samples - want_pos)
    assert (lab[p] >= 1).all() and (lab[n] == 0).all()


def test_sampler_is_a_function_of_the_key_and_uniform():
  labels = np.full(130, -1, np.int32)
  labels[:20], labels[20:120] = 1, 0
  labels = np.random.default_rng(2).permutation(labels)
  fn = jax.jit(jax.vmap(functools.partial(T.sample_balanced, labels=labels, num_samples=16, positive_fraction=0.25)))
  keys = T.image_keys(jax.random.key(0), 4000)
  pos, neg = map(np.asarray, fn(keys))
  again = fn(keys)
  np.testing.assert_array_equal(pos, again[0])
  np.testing.assert_array_equal(neg, again[1])
  eager = T.sample_balanced(keys[7], labels, 16, 0.25)
  np.testing.assert_array_equal(eager[0], pos[7])
  # Different keys pick different sets (4 of 20 positives: a repeat has probability 1 / 4845 per pair).
  assert len({p.tobytes() for p in pos[:50]}) >= 49 and len({n.tobytes() for n in neg[:50]}) == 50
  # Each candidate is chosen with probability 4/20 (positives) or 12/100 (negatives): 5 binomial sigmas.
  for mask, cand, p in ((pos, labels == 1, 4 / 20), (neg, labels == 0, 12 / 100)):
    freq = mask.mean(0)
    tol = 5 * np.sqrt(p * (1 - p) / len(keys))
    assert np.abs(freq[cand] - p).max() < tol, (freq[cand], p)
    assert (freq[~cand] == 0).all()
  # Pairs are uniform too (a permutation prefix, not e.g. a random window): P(both of two positives) = 4*3/(20*19).
  both = (pos[:, labels == 1][:, :, None] & pos[:, labels == 1][:, None, :]).mean(0)[np.triu_indices(20, 1)]
  assert abs(both.mean() - 12 / 380) < 0.003 and both.max() < 12 / 380 + 0.02


# ---------------------------------------------------------------------------------------------------- RPN


def rpn_case(seed, num_anchors=200, num_gt=5):
  rng = np.random.default_rng(seed)
  anchors = int_boxes(rng, num_anchors)
  gt = np.stack([int_boxes(rng, num_gt), int_boxes(rng, num_gt)])
  gt[0, 2] = anchors[5]  # a ground truth that equals an anchor exactly
  valid = np.array([[1, 0, 1, 1, 0], [0, 0, 0, 0, 0]], bool)  # padding between real rows; an empty image
  return anchors, gt, valid


def test_rpn_targets_equal_torchvision(tv):
  from torchvision.models.detection.rpn import RegionProposalNetwork  # pylint: disable=import-outside-toplevel
  rpn = RegionProposalNetwork(None, None, 0.7, 0.3, 256, 0.5, dict(training=1, testing=1), dict(training=1, testing=1),
                              0.7)
  anchors, gt, valid = rpn_case(0)
  keys = T.image_keys(jax.random.key(1), 2)
  fn = jax.jit(jax.vmap(functools.partial(T.rpn_targets, num_samples=64), in_axes=(0, None, 0, 0)))
  out = jax.tree.map(np.asarray, fn(keys, anchors, gt, valid))
  labels, matched_boxes = rpn.assign_targets_to_anchors([t(anchors)] * 2,
                                                        [dict(boxes=t(g[v])) for g, v in zip(gt, valid)])
  for i in range(2):
    np.testing.assert_array_equal(out["labels"][i], labels[i].numpy())
    pos = out["labels"][i] == 1
    np.testing.assert_array_equal(gt[i][out["matched_gt"][i][pos]], matched_boxes[i].numpy()[pos])
    want = rpn.box_coder.encode_single(matched_boxes[i], t(anchors)).numpy()
    np.testing.assert_allclose(out["regression_targets"][i][pos], want[pos], rtol=1e-6, atol=1e-6)
    assert (out["regression_targets"][i][~pos] == 0).all()
    sp, sn = out["sampled_pos"][i], out["sampled_neg"][i]
    assert (out["labels"][i][sp] == 1).all() and (out["labels"][i][sn] == 0).all()
    assert sp.sum() == min(pos.sum(), 32) and sn.sum() == min((out["labels"][i] == 0).sum(), 64 - sp.sum())
  assert (out["labels"][0] == 1).any() and (out["labels"][1] == 0).all()  # the empty image trains as background
  # vmap over images == one image at a time with the same key.
  single = T.rpn_targets(keys[0], anchors, gt[0], valid[0], num_samples=64)
  for name in ("sampled_pos", "sampled_neg", "labels"):
    np.testing.assert_array_equal(single[name], out[name][0])


def test_degenerate_ground_truth_counts_as_padding():
  """A zero-width box (torchvision's GeneralizedRCNN would raise) must not turn every IoU-0 anchor positive."""
  anchors, gt, valid = rpn_case(1)
  gt, valid = gt[0], valid[0].copy()
  degenerate = gt.copy()
  degenerate[1, 2] = degenerate[1, 0]  # row 1, padding in `valid`, becomes a valid zero-width box
  marked = valid.copy()
  marked[1] = True
  key = jax.random.key(0)
  rpn_targets = jax.jit(T.rpn_targets)
  want = rpn_targets(key, anchors, gt, valid)
  got = rpn_targets(key, anchors, degenerate, marked)
  for name in ("labels", "sampled_pos", "sampled_neg"):
    np.testing.assert_array_equal(got[name], want[name])
  assert (np.asarray(want["labels"]) == 1).sum() < 20
  classes = np.ones(5, np.int32)
  sample_rois = jax.jit(functools.partial(T.sample_rois, num_samples=32))
  want = sample_rois(key, anchors[:50], np.ones(50, bool), gt, classes, valid)
  got = sample_rois(key, anchors[:50], np.ones(50, bool), degenerate, classes, marked)
  for name in ("labels", "valid", "index"):
    np.testing.assert_array_equal(got[name], want[name])


# ---------------------------------------------------------------------------------------------------- RoIs


def roi_case(seed, num_proposals=60, num_gt=4):
  rng = np.random.default_rng(seed)
  gt = int_boxes(rng, num_gt, max_side=30)
  # Proposals near the ground truth (jittered copies) and random ones, so positives, negatives and ignored exist.
  near = gt[rng.integers(0, num_gt, num_proposals // 2)] + rng.integers(-3, 4, (num_proposals // 2, 4))
  proposals = np.concatenate([near.astype(np.float32), int_boxes(rng, num_proposals - len(near))])
  proposals[:, 2:] = np.maximum(proposals[:, 2:], proposals[:, :2] + 1)
  proposal_valid = rng.uniform(size=num_proposals) < 0.85
  gt_valid = np.array([True, False, True, True])[:num_gt]
  classes = rng.integers(1, 6, num_gt).astype(np.int32)
  return proposals, proposal_valid, gt, classes, gt_valid


def tv_select(tv, sample, proposals, proposal_valid, gt, classes, gt_valid, num_samples):
  """torchvision's select_training_samples on the real rows, its sampler replaced by the sample `sample` drew."""
  import torch  # pylint: disable=import-outside-toplevel
  from torchvision.models.detection.roi_heads import RoIHeads  # pylint: disable=import-outside-toplevel
  heads = RoIHeads(None, None, None, 0.5, 0.5, num_samples, 0.25, None, 0.05, 0.5, 100)
  cand_valid = np.concatenate([proposal_valid, gt_valid])
  where = compact_index(cand_valid)
  n_cand = cand_valid.sum()
  pos, neg = torch.zeros(n_cand, dtype=torch.uint8), torch.zeros(n_cand, dtype=torch.uint8)
  rows = sample["valid"]
  pos[where[sample["index"][rows & sample["positive"]]]] = 1
  neg[where[sample["index"][rows & ~sample["positive"]]]] = 1
  seen = []

  def sampler(labels):
    seen.append(labels[0].numpy())
    return [pos], [neg]

  heads.fg_bg_sampler = sampler
  target = dict(boxes=t(gt[gt_valid]), labels=t(classes[gt_valid].astype(np.int64)))
  out = heads.select_training_samples([t(proposals[proposal_valid])], [target])
  return [o[0].numpy() for o in out], seen[0], where


@pytest.mark.parametrize("num_samples", [16, 128])  # 16: the sampler binds; 128: more rows than candidates
def test_sample_rois_equals_torchvision(tv, num_samples):
  proposals, proposal_valid, gt, classes, gt_valid = roi_case(3)
  fn = jax.jit(functools.partial(T.sample_rois, num_samples=num_samples))
  s = jax.tree.map(np.asarray, fn(jax.random.key(5), proposals, proposal_valid, gt, classes, gt_valid))
  (rois, matched, labels, targets), all_labels, where = tv_select(tv, s, proposals, proposal_valid, gt, classes,
                                                                  gt_valid, num_samples)
  n_pos, n_neg = (all_labels > 0).sum(), (all_labels == 0).sum()
  assert n_pos > 0 and n_neg > 0 and (all_labels >= 0).all()  # 0.5 / 0.5: nothing between the thresholds
  want_pos = min(n_pos, int(num_samples * 0.25))
  assert s["positive"].sum() == want_pos and s["valid"].sum() == want_pos + min(n_neg, num_samples - want_pos)
  # Layout: positives first, then negatives, then padding.
  k = s["valid"].sum()
  np.testing.assert_array_equal(s["positive"], np.arange(num_samples) < want_pos)
  np.testing.assert_array_equal(s["valid"], np.arange(num_samples) < k)
  assert (s["labels"][:want_pos] >= 1).all() and (s["labels"][want_pos:] == 0).all() and (s["index"][k:] == -1).all()
  # The same rows as torchvision's (which keeps candidate order): boxes, labels, matched gt, targets.
  order = np.argsort(where[s["index"][:k]])
  np.testing.assert_array_equal(s["rois"][:k][order], rois)
  np.testing.assert_array_equal(s["labels"][:k][order], labels)
  pos = labels > 0
  gt_rows = np.flatnonzero(gt_valid)
  np.testing.assert_array_equal(s["matched_gt"][:k][order][pos], gt_rows[matched[pos]])
  np.testing.assert_allclose(s["regression_targets"][:k][order][pos], targets[pos], rtol=1e-6, atol=1e-5)
  assert (s["regression_targets"][k:] == 0).all() and (s["rois"][k:] == 0).all()
  if num_samples == 128:  # everything not ignored is sampled: the sets are fixed, not just the counts
    assert k == n_pos + n_neg


def test_sample_rois_without_ground_truth_samples_only_background():
  proposals, proposal_valid, gt, classes, _ = roi_case(4)
  sample_rois = jax.jit(functools.partial(T.sample_rois, num_samples=32))
  for gt_, classes_, valid_ in ((gt, classes, np.zeros(4, bool)), (gt[:0], classes[:0], np.zeros(0, bool))):
    s = sample_rois(jax.random.key(0), proposals, proposal_valid, gt_, classes_, valid_)
    assert not s["positive"].any() and (s["labels"] == 0).all() and s["valid"].sum() == 32
    assert proposal_valid[np.asarray(s["index"])].all()  # padded proposals are never sampled
    assert np.isfinite(np.asarray(s["regression_targets"])).all()


def test_sample_rois_vmapped_equals_per_image():
  cases = [roi_case(seed) for seed in (5, 6)]
  stacked = [np.stack(parts) for parts in zip(*cases)]
  keys = T.image_keys(jax.random.key(9), 2)
  fn = functools.partial(T.sample_rois, num_samples=24)
  batched = jax.jit(jax.vmap(fn))(keys, *stacked)
  for i, case in enumerate(cases):
    single = jax.jit(fn)(keys[i], *case)
    for name, value in single.items():
      np.testing.assert_array_equal(batched[name][i], value, err_msg=name)
    assert single["positive"].any()


# ---------------------------------------------------------------------------------------------------- masks


def blob_masks(rng, n, h, w):
  """0/1 masks: a random ellipse each, so that RoIs cut through edges."""
  yy, xx = np.mgrid[:h, :w]
  cy, cx = rng.uniform(0, h, n), rng.uniform(0, w, n)
  ry, rx = rng.uniform(4, h / 2, n), rng.uniform(4, w / 2, n)
  return (((yy - cy[:, None, None]) / ry[:, None, None]) ** 2
          + ((xx - cx[:, None, None]) / rx[:, None, None]) ** 2 <= 1).astype(np.uint8)


def inside_boxes(rng, n, h, w, lo, hi):
  """Boxes of sides in [lo, hi] (float corners) inside an h x w image."""
  side = rng.uniform(lo, hi, (n, 2))
  xy = rng.uniform(0, 1, (n, 2)) * (np.float32([w, h]) - side)
  return np.concatenate([xy, xy + side], axis=1).astype(np.float32)


def tv_mask_targets(tv, monkeypatch, masks, rois, matched, sampling_ratio):
  from torchvision.models.detection import roi_heads  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(roi_heads, "roi_align", python_roi_align(sampling_ratio))
  # One RoI at a time: the adaptive python RoIAlign holds [RoIs, 28, 28, H, W] samples.
  out = [roi_heads.project_masks_on_boxes(t(masks), t(rois[i:i + 1]), t(matched[i:i + 1]), 28)
         for i in range(len(rois))]
  return np.concatenate([o.numpy() for o in out])


def test_mask_targets_equal_project_masks_on_boxes(tv, monkeypatch):
  """With the same fixed sampling ratio (the default, 4) the targets are torchvision's; RoIs of 3 to 40 pixels."""
  rng = np.random.default_rng(6)
  masks = blob_masks(rng, 3, 40, 48)
  rois, matched = inside_boxes(rng, 8, 40, 48, 3, 40), rng.integers(0, 3, 8).astype(np.int32)
  got = jax.jit(T.mask_targets)(masks, matched, rois)
  np.testing.assert_allclose(got, tv_mask_targets(tv, monkeypatch, masks, rois, matched, 4), atol=1e-5)
  batched = jax.jit(jax.vmap(T.mask_targets))(np.stack([masks, masks[::-1]]), np.stack([matched, 2 - matched]),
                                              np.stack([rois, rois]))
  np.testing.assert_allclose(batched[0], got, atol=1e-6)
  np.testing.assert_allclose(batched[1], got, atol=1e-6)  # reversed masks, reversed indices: the same targets


def test_mask_targets_against_adaptive_sampling(tv, monkeypatch):
  """torchvision's adaptive grid (ceil(side / 28) points per axis) equals a fixed grid of 2 for RoIs with both
  sides in (28, 56]; for large RoIs the default grid (4) stays close to it (documented in mask_targets)."""
  rng = np.random.default_rng(7)
  masks = blob_masks(rng, 2, 64, 64)
  matched = rng.integers(0, 2, 4).astype(np.int32)
  mid = inside_boxes(rng, 4, 64, 64, 29, 56)
  mask_targets = jax.jit(T.mask_targets, static_argnames=("size", "sampling_ratio"))
  np.testing.assert_allclose(mask_targets(masks, matched, mid, sampling_ratio=2),
                             tv_mask_targets(tv, monkeypatch, masks, mid, matched, None), atol=1e-5)
  # A checkerboard of 4-px squares inside an ellipse: many boundaries, where the grids differ most.
  masks = blob_masks(rng, 2, 100, 100) * np.kron(np.indices((25, 25)).sum(0) % 2, np.ones((4, 4)))[None]
  masks = masks.astype(np.uint8)
  rois, matched = inside_boxes(rng, 3, 100, 100, 60, 100), np.int32([0, 1, 0])
  want = tv_mask_targets(tv, monkeypatch, masks, rois, matched, None)
  errors = {}
  for ratio in (4, 2):
    got = np.asarray(mask_targets(masks, matched, rois, sampling_ratio=ratio))
    diff = np.abs(got - want)
    errors[ratio] = diff.mean(), ((got >= 0.5) != (want >= 0.5)).mean()
    print(f"sampling_ratio {ratio}: mean |target - adaptive| {errors[ratio][0]:.4f}, max {diff.max():.3f}, "
          f"flips at 0.5 {errors[ratio][1]:.4f}")
  assert errors[4][0] < 0.005 and errors[4][1] < 0.005
  assert errors[4][0] < errors[2][0] / 2  # the default is the better fixed grid for large RoIs
