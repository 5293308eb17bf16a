"""Training targets of Mask R-CNN: matching, balanced sampling, RPN / box-head / mask-head targets.

Each function reproduces torchvision's training code (torchvision/models/detection/_utils.py Matcher,
BalancedPositiveNegativeSampler, BoxCoder; rpn.py RegionProposalNetwork.assign_targets_to_anchors; roi_heads.py
add_gt_proposals, assign_targets_to_proposals, subsample, select_training_samples, project_masks_on_boxes) with
static shapes, so it runs under jit:
- ground truth is padded to N rows with a `valid` mask; padded rows are never matched (an image whose rows are all
  padding is torchvision's empty-target case: every anchor / proposal is background);
- sampling returns masks over the candidates instead of index lists, chosen uniformly at random from a JAX key
  (torchvision draws torch.randperm from the global generator), so a resumed run that derives the same key samples
  the same anchors and RoIs: the sample is a function of the key and the inputs only;
- the box head's sample has a fixed row count S = num_samples, positives first, then negatives, then padding.

Everything here is per image: the model vmaps it over the batch with one key per image (`image_keys`), and the
losses in losses.py take the batched results. Boxes are float32 (x1, y1, x2, y2) in input-image pixels.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from segjax.ops import roi_align as roi_align_lib
from segjax.ops.boxes import BOX_HEAD_WEIGHTS, RPN_WEIGHTS, box_iou, encode_boxes

# Matcher codes (torchvision's Matcher.BELOW_LOW_THRESHOLD / BETWEEN_THRESHOLDS).
BELOW_LOW_THRESHOLD = -1
BETWEEN_THRESHOLDS = -2


def _at_least_one_row(gt_boxes: jax.Array, gt_valid: jax.Array, *more: jax.Array) -> tuple[jax.Array, ...]:
  """Zero-row ground truth as one padded row, so that gathers by a (clamped) matched row stay in bounds."""
  if gt_boxes.shape[0]:
    return (gt_boxes, gt_valid, *more)
  return (jnp.zeros((1, 4), gt_boxes.dtype), jnp.zeros((1,), bool), *(jnp.zeros((1,), m.dtype) for m in more))


def _usable(gt_boxes: jax.Array, gt_valid: jax.Array) -> jax.Array:
  """gt_valid without degenerate boxes (width or height <= 0). torchvision's GeneralizedRCNN raises on those; under
  jit we cannot, and in the Matcher such a box (IoU 0 with everything) would make every anchor whose best IoU is
  0 a low-quality positive, so it is dropped like padding."""
  return gt_valid & (gt_boxes[:, 2] > gt_boxes[:, 0]) & (gt_boxes[:, 3] > gt_boxes[:, 1])


def image_keys(key: jax.Array, batch_size: int) -> jax.Array:
  """One sampling key per image, fold_in(key, i): [B] keys for vmapping the per-image targets."""
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(batch_size))


def match(iou: jax.Array, gt_valid: jax.Array, high: float, low: float, allow_low_quality: bool = False) -> jax.Array:
  """torchvision's Matcher: the ground truth each prediction is assigned to, or a negative code.

  Args:
    iou: [N, M] quality of (ground truth, prediction) pairs (box IoU).
    gt_valid: [N] bool/0-1; padded ground truth is never matched.
    high: IoU >= high is a match.
    low: IoU < low is BELOW_LOW_THRESHOLD (-1); low <= IoU < high is BETWEEN_THRESHOLDS (-2).
    allow_low_quality: also match each valid ground truth's best predictions (all that tie at its highest IoU,
      even if that IoU is low or 0) to their own best ground truth, as Matcher.set_low_quality_matches_ (the RPN).

  Returns:
    [M] int32: the matched ground-truth row (the first of equal maxima, as torch.max), -1 or -2. With no valid
    ground truth every prediction is -1 (torchvision's empty-target case labels everything background).
  """
  iou = jnp.asarray(iou, jnp.float32)
  gt_valid = jnp.asarray(gt_valid).astype(bool)
  if iou.shape[0] == 0:  # no ground-truth rows at all: everything is background
    return jnp.full(iou.shape[1:], BELOW_LOW_THRESHOLD, jnp.int32)
  # Padded rows get -1, below any real IoU, so they are never a prediction's best ground truth.
  q = jnp.where(gt_valid[:, None], iou, -1.0)
  matched_vals = q.max(axis=0)
  all_matches = q.argmax(axis=0).astype(jnp.int32)
  matches = jnp.where(matched_vals < low, BELOW_LOW_THRESHOLD,
                      jnp.where(matched_vals < high, BETWEEN_THRESHOLDS, all_matches))
  if allow_low_quality:
    best_for_gt = q.max(axis=1)  # [N]
    is_best = (q == best_for_gt[:, None]) & gt_valid[:, None]
    matches = jnp.where(is_best.any(axis=0), all_matches, matches)
  return jnp.where(gt_valid.any(), matches, BELOW_LOW_THRESHOLD).astype(jnp.int32)


def _take_random(key: jax.Array, candidate: jax.Array, count: jax.Array, max_count: int) -> jax.Array:
  """A uniformly random subset of `count` (<= max_count, <= #candidates) of the True entries of `candidate` [M],
  as a bool mask: the candidates with the `count` largest random priorities (a random permutation's prefix)."""
  m = candidate.shape[0]
  k = min(max_count, m)
  if k == 0:
    return jnp.zeros((m,), bool)
  # 31 random bits per entry; non-candidates get -1 and so rank last. Equal priorities (probability ~M^2 / 2^32)
  # fall back to the lower index first, a negligible bias.
  priority = jnp.where(candidate, (jax.random.bits(key, (m,), jnp.uint32) >> 1).astype(jnp.int32), -1)
  _, idx = jax.lax.top_k(priority, k)
  take = jnp.arange(k) < count
  return jnp.zeros((m,), bool).at[idx].max(take)


def sample_balanced(key: jax.Array, labels: jax.Array, num_samples: int,
                    positive_fraction: float) -> tuple[jax.Array, jax.Array]:
  """BalancedPositiveNegativeSampler for one image, with static shapes.

  Args:
    key: the image's sampling key.
    labels: [M]; >= 1 positive (a class id or 1), 0 negative, < 0 ignored (never sampled).
    num_samples: batch_size_per_image (256 for the RPN, 512 for the box head).
    positive_fraction: 0.5 for the RPN, 0.25 for the box head.

  Returns:
    (pos, neg) bool [M] masks, with torchvision's counts: num_pos = min(#positives, int(num_samples *
    positive_fraction)), num_neg = min(#negatives, num_samples - num_pos); each a uniformly random subset of its
    candidates given the key.
  """
  labels = jnp.asarray(labels)
  positive, negative = labels >= 1, labels == 0
  max_pos = int(num_samples * positive_fraction)
  num_pos = jnp.minimum(positive.sum(), max_pos)
  num_neg = jnp.minimum(negative.sum(), num_samples - num_pos)
  key_pos, key_neg = jax.random.split(key)
  return (_take_random(key_pos, positive, num_pos, max_pos),
          _take_random(key_neg, negative, num_neg, num_samples))


def rpn_targets(key: jax.Array, anchors: jax.Array, gt_boxes: jax.Array, gt_valid: jax.Array,
                fg_iou: float = 0.7, bg_iou: float = 0.3, num_samples: int = 256, positive_fraction: float = 0.5,
                weights: Sequence[float] = RPN_WEIGHTS) -> dict[str, jax.Array]:
  """The RPN's anchor labels, sample and regression targets for one image (assign_targets_to_anchors + sampler).

  vmap over the batch with one key per image (`image_keys`).

  Args:
    key: the image's sampling key.
    anchors: [A, 4] the image's anchors (all levels).
    gt_boxes: [N, 4] ground truth, padded.
    gt_valid: [N] 1 for a real (non-crowd) box; boxes of zero width or height count as padding.
    fg_iou, bg_iou: the Matcher's thresholds (0.7 / 0.3), low-quality matches allowed.
    num_samples, positive_fraction: the sampler's (256, 0.5).
    weights: BoxCoder weights ((1, 1, 1, 1) in torchvision's RPN).

  Returns:
    dict(labels [A] float32 (1 object, 0 background, -1 ignored), sampled_pos [A] bool, sampled_neg [A] bool,
    matched_gt [A] int32 (the matched row, 0 where unmatched), regression_targets [A, 4] float32 (encoded
    matched boxes against the anchors; 0 on anchors that are not positive, which torchvision computes but never
    uses, and which could be inf/NaN there)).
  """
  anchors = jnp.asarray(anchors, jnp.float32)
  gt_boxes, gt_valid = _at_least_one_row(jnp.asarray(gt_boxes, jnp.float32), jnp.asarray(gt_valid).astype(bool))
  gt_valid = _usable(gt_boxes, gt_valid)
  matched = match(box_iou(gt_boxes, anchors), gt_valid, fg_iou, bg_iou, allow_low_quality=True)
  labels = jnp.where(matched >= 0, 1.0, jnp.where(matched == BETWEEN_THRESHOLDS, -1.0, 0.0)).astype(jnp.float32)
  pos, neg = sample_balanced(key, labels, num_samples, positive_fraction)
  matched_gt = jnp.maximum(matched, 0)
  targets = encode_boxes(gt_boxes[matched_gt], anchors, weights)
  targets = jnp.where((matched >= 0)[:, None], targets, 0.0)
  return dict(labels=labels, sampled_pos=pos, sampled_neg=neg, matched_gt=matched_gt, regression_targets=targets)


def sample_rois(key: jax.Array, proposals: jax.Array, proposal_valid: jax.Array, gt_boxes: jax.Array,
                gt_classes: jax.Array, gt_valid: jax.Array, num_samples: int = 512, positive_fraction: float = 0.25,
                fg_iou: float = 0.5, bg_iou: float = 0.5,
                weights: Sequence[float] = BOX_HEAD_WEIGHTS) -> dict[str, jax.Array]:
  """The box head's training RoIs for one image (RoIHeads.select_training_samples), S = num_samples rows.

  The valid ground-truth boxes are appended to the proposals (add_gt_proposals), matched without low-quality
  matches (IoU >= fg_iou positive with the matched box's class, < bg_iou background, between ignored), and
  sampled by `sample_balanced`. The sample is laid out positives first (in candidate order), then negatives,
  then padding: a mask head takes the first int(num_samples * positive_fraction) rows, which hold every positive.
  vmap over the batch with one key per image (`image_keys`).

  Args:
    key: the image's sampling key.
    proposals: [P, 4] the RPN's proposals (gradients stopped by the caller).
    proposal_valid: [P] 1 for a real proposal; padded proposals are never sampled.
    gt_boxes: [N, 4]; gt_classes: [N] int 1..K; gt_valid: [N] 1 for a real (non-crowd) box (zero width or
      height: padding).
    num_samples, positive_fraction: batch_size_per_image (512) and positive_fraction (0.25).
    fg_iou, bg_iou: the Matcher's thresholds (0.5 / 0.5).
    weights: the box head's BoxCoder weights (10, 10, 5, 5).

  Returns:
    dict of S rows: rois [S, 4], valid [S] bool (a sampled row), positive [S] bool, labels [S] int32 (the class
    of a positive, 0 for a negative or padding), matched_gt [S] int32 (ground-truth row of a positive, 0
    otherwise), regression_targets [S, 4] (0 except on positives), index [S] int32 (the row's candidate in
    concat(proposals, gt_boxes), -1 for padding).
  """
  proposals = jnp.asarray(proposals, jnp.float32)
  gt_boxes, gt_valid, gt_classes = _at_least_one_row(
      jnp.asarray(gt_boxes, jnp.float32), jnp.asarray(gt_valid).astype(bool), jnp.asarray(gt_classes, jnp.int32))
  gt_valid = _usable(gt_boxes, gt_valid)
  boxes = jnp.concatenate([proposals, gt_boxes], axis=0)  # add_gt_proposals
  box_valid = jnp.concatenate([jnp.asarray(proposal_valid).astype(bool), gt_valid], axis=0)
  matched = match(box_iou(gt_boxes, boxes), gt_valid, fg_iou, bg_iou, allow_low_quality=False)
  matched_gt = jnp.maximum(matched, 0)
  labels = jnp.where(matched >= 0, gt_classes[matched_gt], 0)
  labels = jnp.where((matched == BETWEEN_THRESHOLDS) | ~box_valid, -1, labels)
  pos, neg = sample_balanced(key, labels, num_samples, positive_fraction)

  # Positives first, then negatives, then the rest; a stable sort keeps candidate order within each group.
  group = jnp.where(pos, 0, jnp.where(neg, 1, 2))
  short = max(num_samples - group.shape[0], 0)  # fewer candidates than rows: pad with unsampled ones
  group = jnp.concatenate([group, jnp.full((short,), 2, group.dtype)])
  order = jnp.argsort(group, stable=True)[:num_samples]
  row_valid = group[order] < 2
  index = jnp.where(row_valid, order, -1).astype(jnp.int32)
  safe = jnp.where(row_valid, order, 0)
  positive = group[order] == 0
  rois = jnp.where(row_valid[:, None], boxes[safe], 0.0)
  row_gt = jnp.where(positive, matched_gt[safe], 0).astype(jnp.int32)
  targets = encode_boxes(gt_boxes[row_gt], rois, weights)
  return dict(rois=rois, valid=row_valid, positive=positive,
              labels=jnp.where(positive, labels[safe], 0).astype(jnp.int32), matched_gt=row_gt,
              regression_targets=jnp.where(positive[:, None], targets, 0.0), index=index)


def mask_targets(gt_masks: jax.Array, matched_gt: jax.Array, rois: jax.Array, size: int = 28,
                 sampling_ratio: int = 4) -> jax.Array:
  """The mask head's targets for one image (project_masks_on_boxes): each RoI's matched ground-truth mask,
  RoIAligned (aligned=False, as torchvision) to size x size. vmap over the batch.

  torchvision uses sampling_ratio=-1 (adaptive: ceil(RoI side / size) points per bin and axis), which a static
  shape cannot hold; a fixed grid of `sampling_ratio` points per bin and axis is averaged instead. It equals
  torchvision's target exactly for RoIs whose sides both need that many points (85..112 px for the default 4),
  and elsewhere differs on mask-boundary bins only. Measured against torchvision's adaptive python RoIAlign on
  ellipse and 4-px checkerboard masks (mean |difference| of the targets, fraction of pixels flipping at 0.5):
  sides 8-28 px: 0.0020, 0.0002; 29-56: 0.0039, 0.0004; 57-84: 0.0004, 0.0006; 85-127: 0.0016, 0.0015. A grid of 2
  (the box pooler's) is exact at 29-56 px but worse on large objects (85-127 px: 0.016, 0.034), which dominate
  COCO's mask pixels, hence 4 (the gather stays small: R * size^2 * 16 * 4 values).
  tests/models/detection/test_targets.py checks the exact case and bounds the difference.

  Args:
    gt_masks: [N, H, W] 0/1 ground-truth masks (any numeric dtype).
    matched_gt: [R] int, the ground-truth row of each RoI (rows of padding may point anywhere in range).
    rois: [R, 4] boxes in image pixels.
    size: output side (28).
    sampling_ratio: points per bin and axis (> 0).

  Returns:
    [R, size, size] float32 in [0, 1].
  """
  n, h, w = gt_masks.shape
  if n == 0:
    return jnp.zeros((jnp.shape(rois)[0], size, size), jnp.float32)
  # Each RoI reads only its own mask: the masks are one flat [N*H*W, 1] map and RoI r starts at row
  # matched_gt[r] * H * W (a gather of R * size^2 * sampling_ratio^2 * 4 values, not R masks of H x W). The map
  # keeps its dtype (uint8): only the gathered values become float32, never an [N, H, W] float copy (100 COCO
  # masks of 800 x 1333 would be 430 MB per image). int32 row offsets hold N * H * W < 2^31.
  gt_masks = jnp.asarray(gt_masks)
  flat = gt_masks.astype(jnp.uint8).reshape(n * h * w, 1) if gt_masks.dtype == bool else gt_masks.reshape(-1, 1)
  offsets = jnp.clip(jnp.asarray(matched_gt, jnp.int32), 0, n - 1) * (h * w)
  out = roi_align_lib._roi_align_flat(  # pylint: disable=protected-access
      flat, jnp.asarray(rois, jnp.float32), h, w, offsets, jnp.float32(1.0), size, sampling_ratio, False)
  return out[..., 0].astype(jnp.float32)
