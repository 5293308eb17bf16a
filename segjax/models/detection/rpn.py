"""The region proposal network of Faster R-CNN (Ren et al., NeurIPS 2015) on FPN levels, as torchvision's
models/detection/rpn.py computes it (RPNHead, RegionProposalNetwork.filter_proposals), with static shapes.

Proposals, per image (torchvision's filter_proposals):
  1. per level, the `pre_nms_top_n` anchors with the highest objectness (all of a level's when it has fewer);
  2. their deltas decoded against the anchors (BoxCoder weights (1, 1, 1, 1), dw/dh clamped at log(1000/16));
  3. clipped to the image; boxes narrower or lower than `min_size` (1e-3) and scores (sigmoid) below
     `score_thresh` (0) dropped;
  4. NMS at `nms_thresh` (0.7) within each level (batched by level), the best `post_nms_top_n` kept in
     descending score order.
Dropping is a `valid` mask and the output always has `post_nms_top_n` rows (padding rows are zero boxes, invalid),
so everything jits. Of equal objectness logits top-k takes the lower anchor index first (torch.topk leaves the
order of ties unspecified; real-valued logits do not tie in practice). The proposals carry no gradient
(torchvision detaches them): the second stage's losses train the box head only, the RPN's own losses the RPN.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.layers import Dtype, symmetric_padding
from segjax.ops.boxes import RPN_WEIGHTS, clip_boxes_to_image, decode_boxes, small_boxes_mask
from segjax.ops.conv import Conv
from segjax.ops.nms import batched_nms

# torchvision's RPNHead: normal(std=0.01) weights, zero biases.
rpn_init = nn.initializers.normal(0.01)


class RPNHead(nn.Module):
  """3x3 conv + ReLU, then 1x1 objectness (A per cell) and 1x1 deltas (4A), shared by all levels.

  `__call__(levels)` with levels a list of [B, H_l, W_l, C] returns (objectness [B, sum H_l W_l A] logits,
  deltas [B, sum H_l W_l A, 4]) in torchvision's order (levels, then positions row-major, then anchors), the
  order of `segjax.ops.anchors.fpn_anchors`.

  Attributes:
    num_anchors: anchors per position A (3: one size, three aspect ratios).
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  num_anchors: int = 3
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, levels: Sequence[jax.Array]) -> tuple[jax.Array, jax.Array]:
    kw = dict(kernel_init=rpn_init, dtype=self.dtype, param_dtype=self.param_dtype)
    channels = levels[0].shape[-1]
    conv = Conv(channels, (3, 3), padding=symmetric_padding(3), name="conv", **kw)
    cls_logits = Conv(self.num_anchors, (1, 1), padding="VALID", name="cls_logits", **kw)
    bbox_pred = Conv(4 * self.num_anchors, (1, 1), padding="VALID", name="bbox_pred", **kw)
    objectness, deltas = [], []
    for x in levels:
      t = nn.relu(conv(x))
      b = x.shape[0]
      # NHWC [B, H, W, A] is torchvision's permute(0, 2, 3, 1) already; the 4A channels are anchor-major (a*4+k).
      objectness.append(cls_logits(t).astype(jnp.float32).reshape(b, -1))
      deltas.append(bbox_pred(t).astype(jnp.float32).reshape(b, -1, 4))
    return jnp.concatenate(objectness, axis=1), jnp.concatenate(deltas, axis=1)


def filter_proposals(objectness: jax.Array, deltas: jax.Array, anchors: jax.Array, level_sizes: Sequence[int],
                     image_size: Sequence[int] | jax.Array, *, pre_nms_top_n: int, post_nms_top_n: int,
                     nms_thresh: float = 0.7, min_size: float = 1e-3,
                     score_thresh: float = 0.0) -> tuple[jax.Array, jax.Array, jax.Array]:
  """One image's proposals, as torchvision's filter_proposals (steps in the module doc).

  Args:
    objectness: [N] logits of all anchors.
    deltas: [N, 4] predicted deltas of all anchors.
    anchors: [N, 4].
    level_sizes: static number of anchors of each level (`segjax.ops.anchors.num_anchors_per_level`).
    image_size: (H, W) the boxes are clipped to (static, or a traced [2] array).
    pre_nms_top_n: anchors kept per level before NMS.
    post_nms_top_n: proposals returned.
    nms_thresh, min_size, score_thresh: torchvision's (0.7, 1e-3, 0.0).

  Returns:
    (boxes [post_nms_top_n, 4], scores [post_nms_top_n] (sigmoid), valid [post_nms_top_n] bool), in descending
    score order, padding rows zero and invalid. No gradient flows through them.
  """
  objectness = jax.lax.stop_gradient(objectness.astype(jnp.float32))
  deltas = jax.lax.stop_gradient(deltas.astype(jnp.float32))
  anchors = jnp.asarray(anchors, jnp.float32)
  picked, levels = [], []
  start = 0
  for level, n in enumerate(level_sizes):
    k = min(int(pre_nms_top_n), int(n))
    _, idx = jax.lax.top_k(objectness[start:start + n], k)
    picked.append(idx + start)
    levels.append(jnp.full((k,), level, jnp.int32))
    start += n
  picked = jnp.concatenate(picked)
  levels = jnp.concatenate(levels)
  boxes = decode_boxes(deltas[picked], anchors[picked], RPN_WEIGHTS)
  boxes = clip_boxes_to_image(boxes, image_size)
  scores = jax.nn.sigmoid(objectness[picked])
  keep = small_boxes_mask(boxes, min_size) & (scores >= score_thresh)
  idx, kept = batched_nms(boxes, scores, levels, nms_thresh, post_nms_top_n, keep)
  idx = jnp.maximum(idx, 0)
  boxes = jnp.where(kept[:, None], boxes[idx], 0.0)
  return boxes, jnp.where(kept, scores[idx], 0.0), kept
