"""segjax.models.detection.roi_heads against torchvision's RoIHeads.postprocess_detections, TwoMLPHead,
FastRCNNPredictor, MaskRCNNHeads, MaskRCNNPredictor and maskrcnn_inference (nms replaced by the kernel's numpy
transcription)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax.models.detection import roi_heads as H
from tests.conftest import import_torchvision
from tests.models.detection.test_torchvision_equality import nms_reference

K = 3  # object classes


@pytest.fixture(scope="module")
def tv():
  torchvision = import_torchvision()
  patch = pytest.MonkeyPatch()
  patch.setattr(torchvision.ops.boxes, "nms", nms_reference)
  yield torchvision.models.detection
  patch.undo()


def head_inputs(seed, r, image_size):
  """Class logits spread over a few units (well separated scores), deltas, proposals inside the image."""
  rng = np.random.default_rng(seed)
  h, w = image_size
  logits = rng.normal(0, 2, (r, K + 1)).astype(np.float32)
  deltas = rng.normal(0, 1, (r, K + 1, 4)).astype(np.float32)
  deltas[::29, :, 2:] = -20.0  # boxes < 1e-2 px: removed as small
  xy = rng.uniform(0, 1, (r, 2)) * [w, h]
  wh = rng.uniform(2, 0.6 * min(h, w), (r, 2))
  proposals = np.concatenate([xy - wh / 2, xy + wh / 2], axis=1).clip(0, [w, h, w, h]).astype(np.float32)
  return logits, deltas, proposals


@pytest.mark.parametrize("candidates", [4096, "exact"])
def test_postprocess_matches_torchvision(tv, candidates):
  import torch  # pylint: disable=import-outside-toplevel
  sizes = [(80, 96), (60, 90)]
  inputs = [head_inputs(i, 300, s) for i, s in enumerate(sizes)]
  heads = tv.roi_heads.RoIHeads(None, None, None, 0.5, 0.5, 512, 0.25, None, 0.05, 0.5, 100)
  want_boxes, want_scores, want_labels = heads.postprocess_detections(
      torch.from_numpy(np.concatenate([i[0] for i in inputs])),
      torch.from_numpy(np.concatenate([i[1].reshape(-1, 4 * (K + 1)) for i in inputs])),
      [torch.from_numpy(i[2]) for i in inputs], sizes)
  # Padding proposals (valid=False) appended to each image: they must give nothing.
  pad = head_inputs(9, 20, (80, 96))
  logits, deltas, proposals = (np.stack([np.concatenate([i[k], pad[k]]) for i in inputs]) for k in range(3))
  valid = np.concatenate([np.ones(300, bool), np.zeros(20, bool)])
  if candidates == "exact":  # the cap at exactly the number of pairs above the threshold still gives the same
    probs = jax.nn.softmax(logits[:, :300], axis=-1)[..., 1:]
    candidates = int((probs > 0.05).sum(axis=(1, 2)).max())
    assert candidates < 300 * K
  fn = jax.jit(jax.vmap(lambda l, d, p, s: H.postprocess_detections(l, d, p, valid, s, candidates=candidates)))
  out = fn(logits, deltas, proposals, jnp.asarray(sizes))
  chex.assert_shape([out["boxes"], out["scores"], out["classes"], out["valid"]],
                    [(2, 100, 4), (2, 100), (2, 100), (2, 100)])
  for i in range(2):
    n = len(want_boxes[i])
    assert 20 < n <= 100 and out["valid"][i].sum() == n and out["valid"][i][:n].all()
    np.testing.assert_allclose(out["boxes"][i][:n], want_boxes[i].numpy(), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(out["scores"][i][:n], want_scores[i].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out["classes"][i][:n], want_labels[i].numpy())
    np.testing.assert_array_equal(out["classes"][i][n:], 0)
  assert len(want_boxes[0]) == 100  # the detections_per_img cut is exercised


def test_box_head_and_predictor_match_torchvision(tv):
  import torch  # pylint: disable=import-outside-toplevel
  torch.manual_seed(0)
  c, rep = 6, 16
  head, predictor = tv.faster_rcnn.TwoMLPHead(c * 49, rep).eval(), tv.faster_rcnn.FastRCNNPredictor(rep, K + 1)
  x = np.random.default_rng(0).normal(size=(2, 5, c, 7, 7)).astype(np.float32)
  with torch.no_grad():
    want_scores, want_deltas = predictor(head(torch.from_numpy(x.reshape(10, c, 7, 7))))

  def dense(m):
    return {"kernel": m.weight.detach().numpy().T, "bias": m.bias.detach().numpy()}

  fc6 = dense(head.fc6)  # torchvision flattens (c, y, x); segjax (y, x, c)
  fc6["kernel"] = fc6["kernel"].reshape(c, 7, 7, rep).transpose(1, 2, 0, 3).reshape(49 * c, rep)
  features = jnp.asarray(x.transpose(0, 1, 3, 4, 2))  # [B, R, 7, 7, C]
  hidden = H.TwoMLPHead(rep).apply({"params": {"fc6": fc6, "fc7": dense(head.fc7)}}, features)
  scores, deltas = H.FastRCNNPredictor(K + 1).apply(
      {"params": {"cls_score": dense(predictor.cls_score), "bbox_pred": dense(predictor.bbox_pred)}}, hidden)
  chex.assert_shape([scores, deltas], [(2, 5, K + 1), (2, 5, K + 1, 4)])
  np.testing.assert_allclose(scores.reshape(10, -1), want_scores.numpy(), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(deltas.reshape(10, -1), want_deltas.numpy(), rtol=1e-5, atol=1e-5)


def test_mask_head_predictor_and_inference_match_torchvision(tv):
  import torch  # pylint: disable=import-outside-toplevel
  torch.manual_seed(0)
  c = 8
  head = tv.mask_rcnn.MaskRCNNHeads(c, [c] * 4, 1).eval()
  predictor = tv.mask_rcnn.MaskRCNNPredictor(c, c, K + 1).eval()
  with torch.no_grad():  # a nonzero transposed-conv bias: its layout is tested too
    predictor.conv5_mask.bias.normal_()
  x = np.random.default_rng(1).normal(size=(6, c, 14, 14)).astype(np.float32)
  labels = np.array([1, 3, 2, 2, 1, 3])
  with torch.no_grad():
    logits = predictor(head(torch.from_numpy(x)))
    want = tv.roi_heads.maskrcnn_inference(logits, [torch.from_numpy(labels)])[0][:, 0]

  def conv(m):
    return {"kernel": m.weight.detach().numpy().transpose(2, 3, 1, 0), "bias": m.bias.detach().numpy()}

  head_params = {f"mask_fcn{i + 1}": conv(head[i][0]) for i in range(4)}
  pred_params = {"conv5_mask": {"kernel": predictor.conv5_mask.weight.detach().numpy().transpose(2, 3, 0, 1),
                                "bias": predictor.conv5_mask.bias.detach().numpy()},
                 "mask_fcn_logits": conv(predictor.mask_fcn_logits)}
  model = H.MaskRCNNPredictor(K + 1, c)
  chex.assert_trees_all_equal_shapes(
      jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 14, 14, c))))["params"], pred_params)
  features = H.MaskRCNNHeads(c).apply({"params": head_params}, jnp.asarray(x.transpose(0, 2, 3, 1)))
  got_logits = model.apply({"params": pred_params}, features)
  np.testing.assert_allclose(got_logits, logits.numpy().transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)
  valid = np.array([True] * 5 + [False])
  got = H.detected_masks(got_logits, jnp.asarray(labels), jnp.asarray(valid))
  chex.assert_shape(got, (6, 28, 28))
  np.testing.assert_allclose(got[:5], want[:5].numpy(), rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(got[5], 0)
