"""segjax.models.detection.rpn against torchvision's RPNHead (+ concat_box_prediction_layers) and
RegionProposalNetwork.filter_proposals (its nms replaced by the kernel's numpy transcription)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax.models.detection import rpn as R
from segjax.ops.anchors import fpn_anchors, num_anchors_per_level
from tests.conftest import import_torchvision
from tests.models.detection.test_torchvision_equality import nms_reference

IMAGE = (64, 96)
FEATURE_SIZES = [(16, 24), (8, 12), (4, 6), (2, 3), (1, 2)]


@pytest.fixture(scope="module")
def tv_rpn():
  torchvision = import_torchvision()
  patch = pytest.MonkeyPatch()
  patch.setattr(torchvision.ops.boxes, "nms", nms_reference)
  yield torchvision.models.detection.rpn
  patch.undo()


def test_head_matches_torchvision_order(tv_rpn):
  import torch  # pylint: disable=import-outside-toplevel
  torch.manual_seed(0)
  head = tv_rpn.RPNHead(8, 3).eval()
  rng = np.random.default_rng(0)
  levels = [rng.normal(size=(2, h, w, 8)).astype(np.float32) for h, w in FEATURE_SIZES]
  with torch.no_grad():
    cls, reg = head([torch.from_numpy(x.transpose(0, 3, 1, 2)) for x in levels])
    want_obj, want_reg = tv_rpn.concat_box_prediction_layers(cls, reg)

  def conv(m):
    return {"kernel": m.weight.detach().numpy().transpose(2, 3, 1, 0), "bias": m.bias.detach().numpy()}

  params = {"conv": conv(head.conv[0][0]), "cls_logits": conv(head.cls_logits), "bbox_pred": conv(head.bbox_pred)}
  model = R.RPNHead(3)
  chex.assert_trees_all_equal_shapes(jax.eval_shape(lambda: model.init(jax.random.key(0), levels))["params"], params)
  obj, deltas = jax.jit(model.apply)({"params": params}, levels)
  total = sum(num_anchors_per_level(FEATURE_SIZES))
  chex.assert_shape(obj, (2, total))
  chex.assert_shape(deltas, (2, total, 4))
  # torchvision concatenates the batch: [B * total, 1] and [B * total, 4].
  np.testing.assert_allclose(obj, want_obj.numpy().reshape(2, total), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(deltas, want_reg.numpy().reshape(2, total, 4), rtol=1e-5, atol=1e-5)
  # The anchors' order is the same: fpn_anchors is what torchvision's AnchorGenerator gives for these sizes.
  assert fpn_anchors(IMAGE, FEATURE_SIZES).shape == (total, 4)


def random_inputs(seed):
  """Objectness logits and deltas of 2 images with small, tiny and out-of-image boxes among them."""
  rng = np.random.default_rng(seed)
  total = sum(num_anchors_per_level(FEATURE_SIZES))
  obj = rng.normal(0, 2, (2, total)).astype(np.float32)
  deltas = rng.normal(0, 0.5, (2, total, 4)).astype(np.float32)
  deltas[:, ::37, 2:] = -12.0  # width and height ~1e-4 px: removed as small
  deltas[:, ::41, 0] = 40.0  # far right of the image: clipped to zero width, removed
  return obj, deltas


@pytest.mark.parametrize("pre,post", [(100, 150), (1000, 60), (5, 300)])
def test_filter_proposals_matches_torchvision(tv_rpn, pre, post):
  import torch  # pylint: disable=import-outside-toplevel
  obj, deltas = random_inputs(pre)
  anchors = np.array(fpn_anchors(IMAGE, FEATURE_SIZES))
  counts = num_anchors_per_level(FEATURE_SIZES)
  image_sizes = [(64, 96), (50, 70)]  # the second image padded: boxes are clipped to its true size
  rpn = tv_rpn.RegionProposalNetwork(None, None, 0.7, 0.3, 256, 0.5, {"training": pre, "testing": pre},
                                     {"training": post, "testing": post}, 0.7).eval()
  coder = tv_rpn.det_utils.BoxCoder((1.0, 1.0, 1.0, 1.0))
  proposals = coder.decode(torch.from_numpy(deltas.reshape(-1, 4)), [torch.from_numpy(anchors)] * 2).view(2, -1, 4)
  want_boxes, want_scores = rpn.filter_proposals(proposals, torch.from_numpy(obj.reshape(-1, 1)), image_sizes, counts)

  fn = jax.jit(jax.vmap(lambda o, d, s: R.filter_proposals(o, d, anchors, counts, s, pre_nms_top_n=pre,
                                                           post_nms_top_n=post)))
  boxes, scores, valid = fn(obj, deltas, jnp.asarray(image_sizes))
  chex.assert_shape([boxes, scores, valid], [(2, post, 4), (2, post), (2, post)])
  for i in range(2):
    n = len(want_boxes[i])
    assert 0 < n and valid[i].sum() == n
    assert valid[i][:n].all()  # valid rows first, in descending score order
    np.testing.assert_allclose(boxes[i][:n], want_boxes[i].numpy(), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(scores[i][:n], want_scores[i].numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(boxes[i][n:], 0)
  if post == 60:
    assert valid.all()  # more survivors than slots: exactly post_nms_top_n of them


def test_filter_proposals_stops_gradients():
  obj, deltas = random_inputs(7)
  anchors = fpn_anchors(IMAGE, FEATURE_SIZES)
  counts = num_anchors_per_level(FEATURE_SIZES)

  def total(o, d):
    boxes, scores, _ = R.filter_proposals(o, d, anchors, counts, IMAGE, pre_nms_top_n=50, post_nms_top_n=20)
    return boxes.sum() + scores.sum()

  grads = jax.grad(total, argnums=(0, 1))(obj[0], deltas[0])
  chex.assert_trees_all_equal(grads, (np.zeros_like(obj[0]), np.zeros_like(deltas[0])))
