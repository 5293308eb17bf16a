"""Panoptic FPN = MaskRCNN(semantic_classes > 0): its semantic logits and loss are SemSegFPNHead and semantic_loss
applied to the same FPN levels (computed here apart, from the backbone's parameters), the instance outputs are
those of the Mask R-CNN with the same parameters, and the semantic loss's gradient reaches the backbone."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax.models.detection.fpn import BackboneWithFPN
from segjax.models.detection.semantic_fpn import SemSegFPNHead, semantic_loss
from tests.models.detection.test_mask_rcnn import SIZE, TINY, batch, init

S = 4  # 3 stuff classes + "things"
PANOPTIC = functools.partial(TINY, semantic_classes=S, semantic_conv_dims=16, semantic_norm="GN",
                             semantic_num_groups=8)


@pytest.fixture(scope="module")
def variables():
  return init(PANOPTIC())


def _levels(variables, images, train=False):
  model = PANOPTIC()
  fpn = BackboneWithFPN(model.backbone, model.frozen_bn, model.fpn_channels, model.small_widths)
  out = fpn.apply({"params": variables["params"]["backbone"], "batch_stats": variables["batch_stats"]["backbone"]},
                  images, train=train, mutable=["batch_stats"] if train else False)
  return out[0] if train else out


def _semantic_targets():
  rng = np.random.default_rng(3)
  labels = rng.integers(0, S, size=(2, SIZE, SIZE)).astype(np.int32)
  labels[0, :5] = 255  # void rows are ignored
  return labels


def test_semantic_logits_are_the_head_on_the_fpn_and_detections_unchanged(variables):
  images, _ = batch()
  out = jax.jit(lambda v, x: PANOPTIC().apply(v, x, train=False))(variables, images)
  assert out["sem_seg"].shape == (2, SIZE, SIZE, S) and out["sem_seg"].dtype == jnp.float32
  head = SemSegFPNHead(S, conv_dims=16, norm="GN", num_groups=8)
  want = head.apply({"params": variables["params"]["sem_seg_head"]}, _levels(variables, images))
  np.testing.assert_allclose(out["sem_seg"], want, rtol=1e-5, atol=1e-5)
  # The same weights without the branch: identical detections.
  plain = {"params": {k: v for k, v in variables["params"].items() if k != "sem_seg_head"},
           "batch_stats": variables["batch_stats"]}
  ref = jax.jit(lambda v, x: TINY().apply(v, x, train=False))(plain, images)
  chex.assert_trees_all_close({k: out[k] for k in ref}, ref, rtol=1e-6, atol=1e-6)


def test_joint_training_loss_and_gradients(variables):
  images, targets = batch()
  targets = {**targets, "sem_seg": _semantic_targets()}

  def loss_fn(params, key):
    out, _ = PANOPTIC().apply({"params": params, "batch_stats": variables["batch_stats"]}, images, train=True,
                              targets=targets, rngs={"sampling": key}, mutable=["batch_stats"])
    return out["loss_sem_seg"], out

  (loss, out), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(variables["params"], jax.random.key(1))
  assert {"loss_mask", "loss_classifier", "loss_sem_seg"} <= set(out)
  head = SemSegFPNHead(S, conv_dims=16, norm="GN", num_groups=8)
  # Training mode: the small backbone's BN normalises with the batch's statistics, as in the model.
  logits = head.apply({"params": variables["params"]["sem_seg_head"]}, _levels(variables, images, train=True))
  np.testing.assert_allclose(loss, semantic_loss(logits, jnp.asarray(targets["sem_seg"])), rtol=1e-5)
  chex.assert_tree_all_finite(grads)
  for module in ("sem_seg_head", "backbone"):
    assert any(np.abs(g).max() > 0 for g in jax.tree.leaves(grads[module])), module
  for module in ("box_head", "mask_head", "rpn"):  # the semantic loss alone does not reach the instance heads
    assert all(np.abs(g).max() == 0 for g in jax.tree.leaves(grads[module])), module


def test_semantic_checks(variables):
  images, targets = batch()
  with pytest.raises(ValueError, match="semantic_classes must be 0"):
    init(TINY(semantic_classes=1))
  with pytest.raises(ValueError, match="sem_seg"):
    PANOPTIC().apply(variables, images, train=True, targets=targets, rngs={"sampling": jax.random.key(0)},
                     mutable=["batch_stats"])
