"""The second stage of Faster / Mask R-CNN as torchvision's models/detection/roi_heads.py and faster_rcnn.py /
mask_rcnn.py compute it: RoI features from the FPN (MultiScaleRoIAlign), the two-MLP box head and its predictor,
the detections' post-processing, and the mask head (He et al., Mask R-CNN, ICCV 2017, Fig. 4 right) with its
predictor, with static shapes.

RoI features: RoIAlign with sampling_ratio 2 and aligned=False (torchvision's pooler) from the level
floor(4 + log2(sqrt(area) / 224)) of P2..P5 (`segjax.ops.roi_align.multiscale_roi_align`), 7x7 for the box head and
14x14 for the mask head. The box head flattens [7, 7, C] channels-last (torchvision flattens [C, 7, 7]);
segjax.weights.detection permutes fc6's input rows when it imports torchvision weights.

Post-processing (torchvision's RoIHeads.postprocess_detections), per image: softmax scores, per-class boxes decoded
with weights (10, 10, 5, 5) and clipped, the background column dropped, (proposal, class) pairs with score >
0.05 and width and height >= 1e-2 kept, NMS per class at 0.5, the best `detections_per_img` (100) by score.
Static shapes: before the NMS only the `candidates` best-scoring valid pairs are kept, because the NMS walk costs
one pass over its input per step and R * K pairs (1000 x 90 on COCO) would be too many. That is exact when at
most `candidates` pairs pass the score threshold (tests/models/detection/test_roi_heads.py checks the bound);
beyond it the lowest-scoring pairs are dropped before the NMS instead of after it, which can only change
detections scoring below the 4096th best pair.
"""

from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.layers import Dtype, symmetric_padding
from segjax.ops.boxes import BBOX_XFORM_CLIP, BOX_HEAD_WEIGHTS, clip_boxes_to_image, decode_boxes, small_boxes_mask
from segjax.ops.conv import Conv
from segjax.ops.nms import batched_nms
from segjax.ops.roi_align import multiscale_roi_align

ROI_LEVELS = ("0", "1", "2", "3")  # the pooler reads P2..P5, not "pool"
# torchvision's mask head and predictor: kaiming_normal_(mode="fan_out", nonlinearity="relu"), zero biases.
mask_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# torch.nn.Linear's default (kaiming_uniform_(a=sqrt(5))): uniform with bound 1 / sqrt(fan_in).
linear_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def roi_features(features: dict[str, jax.Array], boxes: jax.Array, image_size: Sequence[int],
                 output_size: int) -> jax.Array:
  """MultiScaleRoIAlign of a batch: features {"0".."3": [B, H_l, W_l, C]}, boxes [B, R, 4] -> [B, R, o, o, C].

  torchvision's pooler for Mask R-CNN: sampling_ratio 2, aligned=False, canonical level 4 at 224 px, scales
  inferred against the (static, padded) image size.
  """
  levels = [features[k] for k in ROI_LEVELS]
  pool = functools.partial(multiscale_roi_align, image_size=tuple(int(s) for s in image_size),
                           output_size=output_size, sampling_ratio=2, aligned=False)
  return jax.vmap(pool)(levels, jax.lax.stop_gradient(boxes.astype(jnp.float32)))


class TwoMLPHead(nn.Module):
  """fc6 + ReLU, fc7 + ReLU: [..., 7, 7, C] RoI features -> [..., representation_size].

  Attributes:
    representation_size: width of both layers (1024).
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  representation_size: int = 1024
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dense = functools.partial(nn.Dense, self.representation_size, kernel_init=linear_init, dtype=self.dtype,
                              param_dtype=self.param_dtype)
    x = x.reshape(*x.shape[:-3], -1)  # [7, 7, C] channels-last
    x = nn.relu(dense(name="fc6")(x))
    return nn.relu(dense(name="fc7")(x))


class FastRCNNPredictor(nn.Module):
  """cls_score (K + 1 logits) and bbox_pred (4 (K + 1) deltas): [..., D] -> ([..., K+1], [..., K+1, 4]).

  Attributes:
    num_classes: K + 1 (background included), torchvision's num_classes.
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  num_classes: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    dense = functools.partial(nn.Dense, kernel_init=linear_init, dtype=self.dtype, param_dtype=self.param_dtype)
    scores = dense(self.num_classes, name="cls_score")(x).astype(jnp.float32)
    deltas = dense(4 * self.num_classes, name="bbox_pred")(x).astype(jnp.float32)
    return scores, deltas.reshape(*deltas.shape[:-1], self.num_classes, 4)


class MaskRCNNHeads(nn.Module):
  """Four 3x3 convolutions (+ ReLU) of `channels`: [R, 14, 14, C] -> [R, 14, 14, channels].

  Attributes:
    channels: 256 in torchvision.
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  channels: int = 256
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i in range(4):
      x = Conv(self.channels, (3, 3), padding=symmetric_padding(3), kernel_init=mask_init, dtype=self.dtype,
               param_dtype=self.param_dtype, name=f"mask_fcn{i + 1}")(x)
      x = nn.relu(x)
    return x


class ConvTranspose2x2(nn.Module):
  """PyTorch's ConvTranspose2d(kernel 2, stride 2, padding 0): every input pixel becomes a 2x2 output block,
  out[2i + a, 2j + b] = x[i, j] @ kernel[a, b] + bias. The kernel is [2, 2, in, out] (torch's [in, out, 2, 2]
  transposed). [..., H, W, Cin] -> [..., 2H, 2W, features].

  Attributes:
    features: output channels.
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", mask_init, (2, 2, x.shape[-1], self.features), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
    x, kernel, bias = x.astype(self.dtype), kernel.astype(self.dtype), bias.astype(self.dtype)
    y = jnp.einsum("...ijc,abco->...iajbo", x, kernel)
    *lead, h, _, w, _, o = y.shape
    return y.reshape(*lead, 2 * h, 2 * w, o) + bias


class MaskRCNNPredictor(nn.Module):
  """conv5_mask (2x2/2 transposed conv) + ReLU, mask_fcn_logits (1x1): [R, 14, 14, C] -> [R, 28, 28, K + 1] logits.

  Attributes:
    num_classes: K + 1.
    channels: channels of the transposed convolution (256).
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  num_classes: int
  channels: int = 256
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.relu(ConvTranspose2x2(self.channels, dtype=self.dtype, param_dtype=self.param_dtype,
                                 name="conv5_mask")(x))
    x = Conv(self.num_classes, (1, 1), padding="VALID", kernel_init=mask_init, dtype=self.dtype,
             param_dtype=self.param_dtype, name="mask_fcn_logits")(x)
    return x.astype(jnp.float32)


def postprocess_detections(class_logits: jax.Array, box_deltas: jax.Array, proposals: jax.Array,
                           proposal_valid: jax.Array, image_size: Sequence[int] | jax.Array, *,
                           score_thresh: float = 0.05, nms_thresh: float = 0.5, detections_per_img: int = 100,
                           candidates: int = 4096) -> dict[str, jax.Array]:
  """One image's detections, as torchvision's postprocess_detections (steps in the module doc).

  Args:
    class_logits: [R, K + 1].
    box_deltas: [R, K + 1, 4].
    proposals: [R, 4].
    proposal_valid: [R] bool (padding proposals give no detection).
    image_size: (H, W) the boxes are clipped to.
    score_thresh, nms_thresh, detections_per_img: torchvision's box_score_thresh, box_nms_thresh,
      box_detections_per_img.
    candidates: (proposal, class) pairs kept for the NMS, the best-scoring valid ones (exact when no more pass
      the score threshold).

  Returns:
    {"boxes" [D, 4], "scores" [D], "classes" int32 [D] (1..K), "valid" bool [D]} with D = detections_per_img,
    in descending score order; padding rows are zero.
  """
  num_classes = class_logits.shape[-1]
  boxes = decode_boxes(box_deltas, proposals[:, None, :], BOX_HEAD_WEIGHTS, BBOX_XFORM_CLIP)
  boxes = clip_boxes_to_image(boxes, image_size)[:, 1:].reshape(-1, 4)
  scores = jax.nn.softmax(class_logits.astype(jnp.float32), axis=-1)[:, 1:].reshape(-1)
  labels = jnp.broadcast_to(jnp.arange(1, num_classes, dtype=jnp.int32), class_logits[:, 1:].shape).reshape(-1)
  valid = jnp.repeat(proposal_valid, num_classes - 1) & (scores > score_thresh) & small_boxes_mask(boxes, 1e-2)
  if candidates < scores.shape[0]:
    # Stable: of equal scores the earlier pair first, the order torchvision's stable NMS sort sees them in.
    _, top = jax.lax.top_k(jnp.where(valid, scores, -1.0), candidates)
    top = jnp.sort(top)
    boxes, scores, labels, valid = boxes[top], scores[top], labels[top], valid[top]
  idx, kept = batched_nms(boxes, scores, labels, nms_thresh, detections_per_img, valid)
  idx = jnp.maximum(idx, 0)
  return {"boxes": jnp.where(kept[:, None], boxes[idx], 0.0), "scores": jnp.where(kept, scores[idx], 0.0),
          "classes": jnp.where(kept, labels[idx], 0), "valid": kept}


def detected_masks(mask_logits: jax.Array, classes: jax.Array, valid: jax.Array) -> jax.Array:
  """Sigmoid probabilities of each detection's class: [D, M, M, K + 1] logits, [D] classes -> [D, M, M] (zero
  for padding rows), torchvision's maskrcnn_inference."""
  picked = jnp.take_along_axis(mask_logits, classes[:, None, None, None], axis=-1)[..., 0]
  return jnp.where(valid[:, None, None], jax.nn.sigmoid(picked), 0.0)
