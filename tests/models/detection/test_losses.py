"""segjax.models.detection.losses against torchvision's RegionProposalNetwork.compute_loss (its sampler replaced
by the sample targets.py drew), fastrcnn_loss and maskrcnn_loss (its RoIAlign replaced by torchvision's python
one at the same fixed sampling ratio): values and gradients (torch autograd) within 1e-5, on padded batches
whose images have different numbers of samples. Also: padded rows holding inf/NaN targets and huge logits change
nothing; images and batches without ground truth give finite losses and gradients (torchvision's values where it
has one); jit.
"""

import functools

import jax
import numpy as np
import pytest

from segjax.models.detection import losses as L
from segjax.models.detection import targets as T
from tests.conftest import import_torchvision
from tests.models.detection.test_targets import blob_masks, inside_boxes, int_boxes, python_roi_align


@pytest.fixture(scope="module")
def tv():
  torchvision = import_torchvision()
  import torchvision.models.detection.roi_heads  # pylint: disable=import-outside-toplevel,unused-import
  import torchvision.models.detection.rpn  # pylint: disable=import-outside-toplevel,unused-import
  return torchvision


def leaf(x):
  """A float64-free torch leaf tensor with gradients, from numpy."""
  import torch  # pylint: disable=import-outside-toplevel
  return torch.tensor(np.asarray(x, np.float32), requires_grad=True)


def close(a, b, atol=1e-5):
  np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=1e-5, atol=atol)


# ---------------------------------------------------------------------------------------------------- RPN


def rpn_batch(seed, valid, num_samples=64, num_anchors=150):
  rng = np.random.default_rng(seed)
  anchors = int_boxes(rng, num_anchors)
  gt = np.stack([int_boxes(rng, valid.shape[1]) for _ in valid])
  gt[0, 0] = anchors[3] + 1  # a close match, so that some positives exist
  fn = jax.jit(jax.vmap(functools.partial(T.rpn_targets, num_samples=num_samples), in_axes=(0, None, 0, 0)))
  targets = fn(T.image_keys(jax.random.key(seed), len(valid)), anchors, gt, valid)
  objectness = rng.normal(0, 2, (len(valid), num_anchors)).astype(np.float32)
  deltas = rng.normal(0, 0.3, (len(valid), num_anchors, 4)).astype(np.float32)
  return anchors, gt, targets, objectness, deltas


def tv_rpn_losses(tv, anchors, gt, valid, targets, objectness, deltas):
  """compute_loss on assign_targets_to_anchors' labels, sampling what `targets` sampled; values and gradients."""
  import torch  # pylint: disable=import-outside-toplevel
  from torchvision.models.detection.rpn import RegionProposalNetwork  # pylint: disable=import-outside-toplevel
  rpn = RegionProposalNetwork(None, None, 0.7, 0.3, 256, 0.5, dict(training=1, testing=1), dict(training=1, testing=1),
                              0.7)
  b = len(gt)
  a = torch.from_numpy(anchors)
  labels, matched = rpn.assign_targets_to_anchors([a] * b,
                                                  [dict(boxes=torch.from_numpy(g[v])) for g, v in zip(gt, valid)])
  regression = rpn.box_coder.encode(matched, [a] * b)
  to_u8 = lambda m: [torch.from_numpy(np.array(x)).to(torch.uint8) for x in m]
  rpn.fg_bg_sampler = lambda _: (to_u8(targets["sampled_pos"]), to_u8(targets["sampled_neg"]))
  obj, dl = leaf(objectness), leaf(deltas)
  loss_obj, loss_box = rpn.compute_loss(obj.reshape(-1), dl.reshape(-1, 4), labels, list(regression))
  (loss_obj + 3 * loss_box).backward()
  return loss_obj.item(), loss_box.item(), obj.grad.numpy(), dl.grad.numpy()


@pytest.mark.parametrize("valid", [np.array([[1, 0, 1], [0, 1, 1]], bool), np.array([[1, 1, 0], [0, 0, 0]], bool)],
                         ids=["padding_between", "one_image_empty"])
def test_rpn_losses_equal_compute_loss(tv, valid):
  anchors, gt, targets, objectness, deltas = rpn_batch(0, valid)
  assert np.asarray(targets["sampled_pos"]).sum() > 0
  losses = lambda o, d: L.rpn_losses(o, d, targets)
  got = jax.jit(losses)(objectness, deltas)
  grads = jax.jit(jax.grad(lambda o, d: losses(o, d)[0] + 3 * losses(o, d)[1], argnums=(0, 1)))(objectness, deltas)
  want = tv_rpn_losses(tv, anchors, gt, valid, targets, objectness, deltas)
  close(got[0], want[0])
  close(got[1], want[1])
  close(grads[0], want[2], atol=1e-7)
  close(grads[1], want[3], atol=1e-7)


# ---------------------------------------------------------------------------------------------------- box head


def box_batch(seed, counts, num_samples=24, num_classes=4, empty=False):
  """Padded box-head samples: image i has counts[i] sampled rows, positives first; garbage in the padded rows."""
  rng = np.random.default_rng(seed)
  b, k1 = len(counts), num_classes + 1
  valid = np.arange(num_samples)[None, :] < np.asarray(counts)[:, None]
  labels = np.where(valid & (rng.uniform(size=valid.shape) < 0.4) & (not empty), rng.integers(1, k1, valid.shape), 0)
  labels = np.where(valid, labels, 7).astype(np.int32)  # padded rows: an out-of-range class
  targets = rng.normal(0, 1, (b, num_samples, 4)).astype(np.float32)
  targets[~valid] = np.nan
  targets[~valid, 0] = np.inf
  samples = dict(valid=valid, labels=labels, regression_targets=targets)
  logits = rng.normal(0, 2, (b, num_samples, k1)).astype(np.float32)
  box_regression = rng.normal(0, 1, (b, num_samples, k1 * 4)).astype(np.float32)
  logits[~valid] *= 1e4  # huge but finite: they must not count
  return samples, logits, box_regression


def tv_box_losses(samples, logits, box_regression):
  import torch  # pylint: disable=import-outside-toplevel
  from torchvision.models.detection.roi_heads import fastrcnn_loss  # pylint: disable=import-outside-toplevel
  valid = samples["valid"]
  lg, br = leaf(logits[valid]), leaf(box_regression[valid])
  counts = valid.sum(1).tolist()
  labels = torch.from_numpy(samples["labels"][valid].astype(np.int64)).split(counts)
  targets = torch.from_numpy(samples["regression_targets"][valid]).split(counts)
  loss_cls, loss_box = fastrcnn_loss(lg, br, list(labels), list(targets))
  (loss_cls + 3 * loss_box).backward()
  grad_lg, grad_br = np.zeros_like(logits), np.zeros_like(box_regression)
  grad_lg[valid], grad_br[valid] = lg.grad.numpy(), br.grad.numpy()
  return loss_cls.item(), loss_box.item(), grad_lg, grad_br


@pytest.mark.parametrize("layout", ["flat", "per_class"])
def test_box_losses_equal_fastrcnn_loss(tv, layout):
  samples, logits, box_regression = box_batch(1, [24, 9])
  assert (samples["labels"][samples["valid"]] > 0).sum() > 3
  reg = box_regression if layout == "flat" else box_regression.reshape(2, 24, 5, 4)
  losses = lambda lg, br: L.box_losses(lg, br, samples)
  got = jax.jit(losses)(logits, reg)
  grads = jax.jit(jax.grad(lambda lg, br: losses(lg, br)[0] + 3 * losses(lg, br)[1], argnums=(0, 1)))(logits, reg)
  want = tv_box_losses(samples, logits, box_regression)
  close(got[0], want[0])
  close(got[1], want[1])
  close(grads[0], want[2], atol=1e-7)
  close(np.asarray(grads[1]).reshape(box_regression.shape), want[3], atol=1e-7)
  assert np.isfinite(np.asarray(grads[0])).all() and (np.asarray(grads[0])[~samples["valid"]] == 0).all()


# ---------------------------------------------------------------------------------------------------- mask head


def mask_batch(seed, num_pos, rows=6, num_gt=3, size=40, num_classes=3):
  """Per image: gt masks, rois (the positives first), matched gt rows, their classes; mask logits NHWC."""
  rng = np.random.default_rng(seed)
  b = len(num_pos)
  masks = np.stack([blob_masks(rng, num_gt, size, size) for _ in range(b)])
  classes = rng.integers(1, num_classes + 1, (b, num_gt)).astype(np.int32)
  rois = np.stack([inside_boxes(rng, rows, size, size, 4, size) for _ in range(b)])
  matched = rng.integers(0, num_gt, (b, rows)).astype(np.int32)
  valid = np.arange(rows)[None, :] < np.asarray(num_pos)[:, None]
  labels = np.where(valid, np.take_along_axis(classes, matched, 1), 0).astype(np.int32)
  logits = rng.normal(0, 2, (b, rows, 28, 28, num_classes + 1)).astype(np.float32)
  return masks, classes, rois, matched, valid, labels, logits


def tv_mask_loss(tv, monkeypatch, masks, classes, rois, matched, valid, logits):
  import torch  # pylint: disable=import-outside-toplevel
  from torchvision.models.detection import roi_heads  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(roi_heads, "roi_align", python_roi_align(4))  # mask_targets' fixed grid
  lg = leaf(logits[valid].transpose(0, 3, 1, 2))  # NCHW, as torchvision's mask predictor
  loss = roi_heads.maskrcnn_loss(lg, [torch.from_numpy(r[v]) for r, v in zip(rois, valid)],
                                 [torch.from_numpy(m) for m in masks],
                                 [torch.from_numpy(c.astype(np.int64)) for c in classes],
                                 [torch.from_numpy(i[v].astype(np.int64)) for i, v in zip(matched, valid)])
  loss.backward()
  grad = np.zeros_like(logits)
  grad[valid] = lg.grad.numpy().transpose(0, 2, 3, 1)
  return loss.item(), grad


@pytest.mark.parametrize("num_pos", [[4, 2], [0, 3], [0, 0]], ids=["both", "one_without", "none"])
def test_mask_loss_equals_maskrcnn_loss(tv, monkeypatch, num_pos):
  masks, classes, rois, matched, valid, labels, logits = mask_batch(2, num_pos)
  targets = jax.jit(jax.vmap(T.mask_targets))(masks, matched, rois)
  loss = lambda lg: L.mask_loss(lg, labels, targets, valid)
  got, grad = jax.jit(jax.value_and_grad(loss))(logits)
  want, want_grad = tv_mask_loss(tv, monkeypatch, masks, classes, rois, matched, valid, logits)
  close(got, want)
  close(grad, want_grad, atol=1e-8)
  if not valid.any():
    assert got == 0 and not np.asarray(grad).any()  # torchvision's mask_logits.sum() * 0


# ---------------------------------------------------------------------------------------------------- no ground truth


def test_batch_without_ground_truth_trains_as_background(tv):
  """Every loss of a batch without any ground truth: finite, with finite gradients, equal to torchvision's."""
  import torch  # pylint: disable=import-outside-toplevel
  from torchvision.models.detection.roi_heads import fastrcnn_loss  # pylint: disable=import-outside-toplevel
  valid = np.zeros((2, 3), bool)
  anchors, gt, rpn_t, objectness, deltas = rpn_batch(3, valid)
  assert not np.asarray(rpn_t["sampled_pos"]).any() and np.asarray(rpn_t["sampled_neg"]).sum() == 2 * 64
  rpn = jax.jit(jax.value_and_grad(lambda o, d: sum(L.rpn_losses(o, d, rpn_t)), argnums=(0, 1)))
  total, (g_obj, g_del) = rpn(objectness, deltas)
  got = jax.jit(L.rpn_losses)(objectness, deltas, rpn_t)
  want = tv_rpn_losses(tv, anchors, gt, valid, rpn_t, objectness, deltas)
  close(got[0], want[0])
  assert got[1] == 0 == want[1]
  assert np.isfinite(float(total)) and np.isfinite(np.asarray(g_obj)).all() and not np.asarray(g_del).any()

  rng = np.random.default_rng(4)
  proposals = int_boxes(rng, 40)
  fn = jax.jit(jax.vmap(functools.partial(T.sample_rois, num_samples=16), in_axes=(0, None, None, 0, 0, 0)))
  samples = fn(T.image_keys(jax.random.key(2), 2), proposals, np.ones(40, bool), gt, np.ones((2, 3), np.int32), valid)
  logits = rng.normal(0, 2, (2, 16, 4)).astype(np.float32)
  box_regression = rng.normal(0, 1, (2, 16, 16)).astype(np.float32)
  cls_loss, box_loss = jax.jit(L.box_losses)(logits, box_regression, samples)
  grads = jax.jit(jax.grad(lambda lg, br: sum(L.box_losses(lg, br, samples)), argnums=(0, 1)))(logits, box_regression)
  want_cls, want_box = fastrcnn_loss(torch.from_numpy(logits.reshape(32, 4)),
                                     torch.from_numpy(box_regression.reshape(32, 16)),
                                     [torch.zeros(16, dtype=torch.int64)] * 2, [torch.zeros(16, 4)] * 2)
  close(cls_loss, want_cls.item())
  assert box_loss == 0 == want_box.item()
  assert np.isfinite(np.asarray(grads[0])).all() and not np.asarray(grads[1]).any()


def test_padding_never_matters():
  """Changing anything in padded / unsampled rows (logits, targets, labels) leaves every loss as it was."""
  samples, logits, box_regression = box_batch(5, [10, 3])
  box_losses, rpn_losses = jax.jit(L.box_losses), jax.jit(L.rpn_losses)
  ref = box_losses(logits, box_regression, samples)
  rng = np.random.default_rng(0)
  pad = ~samples["valid"]
  logits2, reg2 = logits.copy(), box_regression.copy()
  logits2[pad] = rng.normal(0, 50, logits2[pad].shape)
  reg2[pad] = rng.normal(0, 50, reg2[pad].shape)
  samples2 = dict(samples, labels=np.where(pad, 3, samples["labels"]).astype(np.int32),
                  regression_targets=np.where(pad[..., None], -5.0, samples["regression_targets"]).astype(np.float32))
  for a, b in zip(ref, box_losses(logits2, reg2, samples2)):
    assert a == b and np.isfinite(float(a))
  # RPN: unsampled anchors' objectness / deltas / targets, and non-positive anchors' deltas, do not count.
  _, _, rpn_t, objectness, deltas = rpn_batch(6, np.array([[1, 1, 0]], bool))
  sampled = np.asarray(rpn_t["sampled_pos"] | rpn_t["sampled_neg"])
  pos = np.asarray(rpn_t["sampled_pos"])
  obj2, del2 = objectness.copy(), deltas.copy()
  obj2[~sampled] = 1e4
  del2[~pos] = np.nan
  rpn_t2 = dict(rpn_t, regression_targets=np.where(pos[..., None], rpn_t["regression_targets"], np.inf))
  for a, b in zip(rpn_losses(objectness, deltas, rpn_t), rpn_losses(obj2, del2, rpn_t2)):
    assert a == b and np.isfinite(float(a))
