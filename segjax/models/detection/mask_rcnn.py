"""Mask R-CNN (He, Gkioxari, Dollar, Girshick, ICCV 2017) and Faster R-CNN (Ren et al., NeurIPS 2015; the same
model with `mask_head=False`) on a ResNet-FPN backbone, computing what torchvision's `maskrcnn_resnet50_fpn`
(torchvision/models/detection/mask_rcnn.py, faster_rcnn.py, generalized_rcnn.py) computes, with static shapes.

Every default is torchvision's; a torchvision state dict imports with segjax.weights.detection and gives the same
detections (tests/models/detection/test_torchvision_equality.py). What differs by design:
- images come in normalised and padded by the input pipeline (torchvision's GeneralizedRCNNTransform normalises,
  resizes and pads inside the model); H and W must be multiples of 32;
- every count is fixed: proposals, sampled RoIs and detections are padded arrays with a `valid` mask;
- the mask head trains on the first int(512 * 0.25) = 128 rows of the RoI sample, which hold all its positives
  (torchvision takes the positives' list);
- sampling draws from the "sampling" RNG stream (`self.make_rng("sampling")`), one key per image.

Panoptic FPN (Kirillov, Girshick, He, Dollar, CVPR 2019) is this model with `semantic_classes` > 0: Detectron2's
semantic branch (segjax.models.detection.semantic_fpn.SemSegFPNHead) on P2..P5 of the same FPN beside the
instance heads, predicting the stuff classes plus one "things" class at the image's resolution. It adds
"sem_seg" logits to the detections and "loss_sem_seg" (cross-entropy, ignore label `semantic_ignore`) to the
losses; the caller weights the terms (Panoptic FPN: 1 for the instance losses, 0.5 for the semantic one).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from segjax.models.detection import losses, targets as targets_lib
from segjax.models.detection.fpn import LEVELS, BackboneWithFPN, trainable_backbone_mask
from segjax.models.detection.roi_heads import (FastRCNNPredictor, MaskRCNNHeads, MaskRCNNPredictor, TwoMLPHead,
                                               detected_masks, postprocess_detections, roi_features)
from segjax.models.detection.rpn import RPNHead, filter_proposals
from segjax.models.detection.semantic_fpn import SemSegFPNHead, semantic_loss
from segjax.models.layers import Dtype, check_divisible, check_images
from segjax.ops.anchors import FPN_ASPECT_RATIOS, FPN_SIZES, fpn_anchors, num_anchors_per_level

BOX_POOL_SIZE = 7
MASK_POOL_SIZE = 14  # the mask head's RoI features; its predictor doubles them to 28 x 28 masks


class MaskRCNN(nn.Module):
  """Mask R-CNN / Faster R-CNN: normalised images [B, H, W, 3] -> detections (eval) or losses (train).

  `__call__(images, *, train, targets=None, image_sizes=None)`:
    train=False: {"boxes" [B, D, 4], "scores" [B, D], "classes" int32 [B, D] (1..K), "valid" bool [B, D],
      "masks" [B, D, 28, 28] (with the mask head: the detected class's sigmoid probabilities, to be pasted with
      segjax.ops.masks.paste_masks_in_image)}, D = detections_per_img, descending score order per image.
    train=True: {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask" (with
      the mask head), "stats": {...}} from targets = {"boxes" [B, N, 4], "classes" [B, N], "masks" [B, N, H, W],
      "valid" [B, N] (crowd excluded)}.
    With semantic_classes > 0 (Panoptic FPN) also "sem_seg" float32 [B, H, W, semantic_classes] logits (eval),
    or "loss_sem_seg" from targets["sem_seg"] [B, H, W] (train).
  `image_sizes` ([B, 2] int (height, width), optional): the images' true sizes before padding, which proposals
  and detections are clipped to as torchvision clips them; default the padded size.

  Attributes:
    num_classes: K object classes (torchvision's num_classes is K + 1: background included).
    backbone: "resnet50", "resnet101" or "small" (plain conv stages for CPU recipes, `small_widths` channels).
    frozen_bn: the backbone's BN uses running statistics always (torchvision's FrozenBatchNorm2d).
    trainable_layers: ResNet stages that train, from layer4 down (torchvision's trainable_backbone_layers);
      used by `trainable_mask`, not by the forward pass.
    mask_head: False gives Faster R-CNN.
    fpn_channels: channels of the FPN, RPN head and mask head.
    small_widths: stage widths of the small backbone.
    representation_size: width of the box head's fc6 / fc7.
    rpn_pre_nms_top_n_train, rpn_pre_nms_top_n_test: anchors per level before the proposals' NMS.
    rpn_post_nms_top_n_train, rpn_post_nms_top_n_test: proposals per image.
    rpn_nms_thresh, rpn_fg_iou_thresh, rpn_bg_iou_thresh, rpn_batch_size_per_image, rpn_positive_fraction,
    rpn_score_thresh: torchvision's RPN settings.
    box_fg_iou_thresh, box_bg_iou_thresh, box_batch_size_per_image, box_positive_fraction, box_score_thresh,
    box_nms_thresh, detections_per_img: torchvision's RoI head settings.
    box_candidates: (proposal, class) pairs entering the detections' NMS (roi_heads.postprocess_detections).
    semantic_classes: 0 (Mask R-CNN) or the classes of Panoptic FPN's semantic branch (stuff classes + 1).
    semantic_conv_dims, semantic_norm, semantic_num_groups, semantic_ignore: the branch's channels (Detectron2's
      128), norm ("GN" or ""), GroupNorm groups (32) and the ignore label of its targets (255).
    dtype: compute dtype (bfloat16 for mixed precision; losses, boxes and scores are float32).
    param_dtype: parameter dtype.
  """

  num_classes: int = 90
  backbone: str = "resnet50"
  frozen_bn: bool = True
  trainable_layers: int = 3
  mask_head: bool = True
  fpn_channels: int = 256
  small_widths: tuple[int, int, int, int] = (16, 32, 64, 128)
  representation_size: int = 1024
  rpn_pre_nms_top_n_train: int = 2000
  rpn_pre_nms_top_n_test: int = 1000
  rpn_post_nms_top_n_train: int = 2000
  rpn_post_nms_top_n_test: int = 1000
  rpn_nms_thresh: float = 0.7
  rpn_fg_iou_thresh: float = 0.7
  rpn_bg_iou_thresh: float = 0.3
  rpn_batch_size_per_image: int = 256
  rpn_positive_fraction: float = 0.5
  rpn_score_thresh: float = 0.0
  box_fg_iou_thresh: float = 0.5
  box_bg_iou_thresh: float = 0.5
  box_batch_size_per_image: int = 512
  box_positive_fraction: float = 0.25
  box_score_thresh: float = 0.05
  box_nms_thresh: float = 0.5
  detections_per_img: int = 100
  box_candidates: int = 4096
  semantic_classes: int = 0
  semantic_conv_dims: int = 128
  semantic_norm: str = "GN"
  semantic_num_groups: int = 32
  semantic_ignore: int = 255
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @property
  def size_divisor(self) -> int:
    """Input heights and widths must be multiples of it (segjax.models' hook): P5 has stride 32."""
    return 32

  def _check(self, images: jax.Array) -> None:
    check_images(images, "MaskRCNN")
    check_divisible(images, "MaskRCNN", self.size_divisor, " (the FPN's coarsest level P5 has stride 32)")
    if self.semantic_classes == 1 or self.semantic_classes < 0:
      raise ValueError(f"MaskRCNN semantic_classes must be 0 (no semantic branch) or >= 2 (stuff classes + 1 "
                       f"'things' class), got {self.semantic_classes}")
    if self.num_classes < 1:
      raise ValueError(f"MaskRCNN num_classes (object classes, background not counted) must be >= 1, "
                       f"got {self.num_classes}")

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool, targets: dict[str, jax.Array] | None = None,
               image_sizes: jax.Array | None = None) -> dict[str, Any]:
    self._check(images)
    if train and self.semantic_classes and (targets is None or "sem_seg" not in targets):
      raise ValueError("Panoptic FPN (semantic_classes > 0) trains on targets['sem_seg'] [B, H, W] labels")
    b, h, w, _ = images.shape
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    features = BackboneWithFPN(self.backbone, self.frozen_bn, self.fpn_channels, self.small_widths,
                               name="backbone", **kw)(images, train=train)
    semantic = None
    if self.semantic_classes:
      head = SemSegFPNHead(self.semantic_classes, conv_dims=self.semantic_conv_dims, norm=self.semantic_norm,
                           num_groups=self.semantic_num_groups, name="sem_seg_head", **kw)
      semantic = head(features).astype(jnp.float32)
    objectness, rpn_deltas = RPNHead(len(FPN_ASPECT_RATIOS[0]), name="rpn", **kw)([features[k] for k in LEVELS])
    feature_sizes = [features[k].shape[1:3] for k in LEVELS]
    anchors = fpn_anchors((h, w), feature_sizes, FPN_SIZES, FPN_ASPECT_RATIOS)
    sizes = jnp.broadcast_to(jnp.asarray([h, w], jnp.int32), (b, 2)) if image_sizes is None else image_sizes

    def proposals_of(obj, deltas, size):
      return filter_proposals(
          obj, deltas, anchors, num_anchors_per_level(feature_sizes), size,
          pre_nms_top_n=self.rpn_pre_nms_top_n_train if train else self.rpn_pre_nms_top_n_test,
          post_nms_top_n=post_nms_top_n,
          nms_thresh=self.rpn_nms_thresh, score_thresh=self.rpn_score_thresh)

    post_nms_top_n = self.rpn_post_nms_top_n_train if train else self.rpn_post_nms_top_n_test
    if self.is_initializing():  # the parameters do not depend on the proposals: skip the NMS loops in init
      proposals = jnp.zeros((b, post_nms_top_n, 4), jnp.float32)
      proposal_valid = jnp.zeros((b, post_nms_top_n), bool)
    else:
      proposals, _, proposal_valid = jax.vmap(proposals_of)(objectness, rpn_deltas, sizes)
    # apply(..., mutable=["intermediates"]) returns them (tests compare them with torchvision's); else a no-op.
    self.sow("intermediates", "proposals", proposals)
    self.sow("intermediates", "proposal_valid", proposal_valid)

    box_head = TwoMLPHead(self.representation_size, name="box_head", **kw)
    box_predictor = FastRCNNPredictor(self.num_classes + 1, name="box_predictor", **kw)
    if self.mask_head:
      mask_head = MaskRCNNHeads(self.fpn_channels, name="mask_head", **kw)
      mask_predictor = MaskRCNNPredictor(self.num_classes + 1, self.fpn_channels, name="mask_predictor", **kw)

    if not train:
      logits, deltas = box_predictor(box_head(roi_features(features, proposals, (h, w), BOX_POOL_SIZE)))

      def detect(lg, dl, props, valid, size):
        return postprocess_detections(lg, dl, props, valid, size, score_thresh=self.box_score_thresh,
                                      nms_thresh=self.box_nms_thresh, detections_per_img=self.detections_per_img,
                                      candidates=self.box_candidates)

      if self.is_initializing():
        d = self.detections_per_img
        out = {"boxes": jnp.zeros((b, d, 4)), "scores": jnp.zeros((b, d)), "classes": jnp.zeros((b, d), jnp.int32),
               "valid": jnp.zeros((b, d), bool)}
      else:
        out = jax.vmap(detect)(logits, deltas, proposals, proposal_valid, sizes)
      if self.mask_head:
        mask_logits = mask_predictor(mask_head(roi_features(features, out["boxes"], (h, w), MASK_POOL_SIZE)))
        out["masks"] = jax.vmap(detected_masks)(mask_logits, out["classes"], out["valid"])
      if semantic is not None:
        out["sem_seg"] = semantic
      return out

    if targets is None:
      raise ValueError("MaskRCNN(train=True) needs targets=dict(boxes, classes, masks, valid)")
    gt_boxes = jnp.asarray(targets["boxes"], jnp.float32)
    gt_classes = jnp.asarray(targets["classes"], jnp.int32)
    gt_valid = jnp.asarray(targets["valid"]) > 0
    keys = targets_lib.image_keys(self.make_rng("sampling"), b)
    rpn_keys, roi_keys = (jax.vmap(lambda k, i=i: jax.random.fold_in(k, i))(keys) for i in range(2))

    rpn_t = jax.vmap(lambda k, g, v: targets_lib.rpn_targets(
        k, anchors, g, v, self.rpn_fg_iou_thresh, self.rpn_bg_iou_thresh, self.rpn_batch_size_per_image,
        self.rpn_positive_fraction))(rpn_keys, gt_boxes, gt_valid)
    loss_objectness, loss_rpn_box_reg = losses.rpn_losses(objectness, rpn_deltas, rpn_t)

    samples = jax.vmap(lambda k, p, pv, g, c, v: targets_lib.sample_rois(
        k, p, pv, g, c, v, self.box_batch_size_per_image, self.box_positive_fraction, self.box_fg_iou_thresh,
        self.box_bg_iou_thresh))(roi_keys, proposals, proposal_valid, gt_boxes, gt_classes, gt_valid)
    rois = jax.lax.stop_gradient(samples["rois"])
    logits, deltas = box_predictor(box_head(roi_features(features, rois, (h, w), BOX_POOL_SIZE)))
    loss_classifier, loss_box_reg = losses.box_losses(logits, deltas, samples)
    out = {"loss_objectness": loss_objectness, "loss_rpn_box_reg": loss_rpn_box_reg,
           "loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}
    stats = {"num_positive_anchors": rpn_t["sampled_pos"].sum(axis=1).mean(dtype=jnp.float32),
             "num_negative_anchors": rpn_t["sampled_neg"].sum(axis=1).mean(dtype=jnp.float32),
             "num_proposals": proposal_valid.sum(axis=1).mean(dtype=jnp.float32),
             "num_positive_rois": samples["positive"].sum(axis=1).mean(dtype=jnp.float32),
             "num_sampled_rois": samples["valid"].sum(axis=1).mean(dtype=jnp.float32)}
    if self.mask_head:
      # sample_rois puts the positives first; at most int(512 * 0.25) of them.
      p = min(int(self.box_batch_size_per_image * self.box_positive_fraction), rois.shape[1])
      mask_rois, positive = rois[:, :p], samples["positive"][:, :p]
      mask_logits = mask_predictor(mask_head(roi_features(features, mask_rois, (h, w), MASK_POOL_SIZE)))
      mask_t = jax.vmap(lambda m, g, r: targets_lib.mask_targets(m, g, r, mask_logits.shape[2]))(
          targets["masks"], samples["matched_gt"][:, :p], mask_rois)
      out["loss_mask"] = losses.mask_loss(mask_logits, samples["labels"][:, :p], mask_t, positive)
    if semantic is not None:
      out["loss_sem_seg"] = semantic_loss(semantic, jnp.asarray(targets["sem_seg"], jnp.int32), self.semantic_ignore)
    out["stats"] = stats
    return out


def trainable_mask(params: Any, *, frozen_bn: bool = True, trainable_layers: int = 3) -> Any:
  """A pytree of bools beside `params`: False for the parameters torchvision does not train.

  The frozen ResNet stages (all but the last `trainable_layers` of layer4, layer3, layer2, layer1, conv1) and,
  with frozen BN, every backbone BN scale/bias. Everything outside the backbone's body trains. Give the optimiser
  this mask so frozen weights get neither updates nor weight decay (torchvision's requires_grad=False). Pass the
  model's `frozen_bn` and `trainable_layers` (the defaults are torchvision's).
  """
  params = params.unfreeze() if hasattr(params, "unfreeze") else params
  flat = traverse_util.flatten_dict(params)
  mask = {}
  for path in flat:
    names = [str(p) for p in path]
    if "body" in names and names.index("body") > 0 and names[names.index("body") - 1] == "backbone":
      mask[path] = trainable_backbone_mask(tuple(names[names.index("body") + 1:]), trainable_layers, frozen_bn)
    else:
      mask[path] = True
  return traverse_util.unflatten_dict(mask)
