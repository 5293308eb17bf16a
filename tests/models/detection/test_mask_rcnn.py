"""MaskRCNN: output shapes and static counts under jit, the Faster R-CNN variant, input checks, the training
branch (finite losses and gradients, deterministic sampling, torchvision's empty-target case), and
`trainable_mask` against torchvision's requires_grad. Equality with torchvision's model is in
test_torchvision_equality.py; the targets and losses against torchvision in test_targets.py / test_losses.py."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from segjax.models.detection.mask_rcnn import MaskRCNN, trainable_mask
from segjax.weights.detection import from_torchvision
from tests.conftest import import_torchvision

K = 3
TINY = functools.partial(MaskRCNN, num_classes=K, backbone="small", frozen_bn=False, fpn_channels=16,
                         small_widths=(8, 8, 16, 16), representation_size=32, rpn_pre_nms_top_n_train=300,
                         rpn_post_nms_top_n_train=120, rpn_pre_nms_top_n_test=200, rpn_post_nms_top_n_test=80,
                         box_batch_size_per_image=64, detections_per_img=12)
SIZE = 64


def init(model, shape=(2, SIZE, SIZE, 3)):
  return jax.jit(lambda k: model.init({"params": k, "dropout": k}, jnp.zeros(shape), train=False))(
      jax.random.key(0))


def batch():
  """Two images with 2 and 1 objects (a third row of padding), as the input pipeline gives them."""
  rng = np.random.default_rng(0)
  images = rng.normal(size=(2, SIZE, SIZE, 3)).astype(np.float32)
  boxes = np.zeros((2, 3, 4), np.float32)
  masks = np.zeros((2, 3, SIZE, SIZE), np.uint8)
  for b, i, (x0, y0, x1, y1) in [(0, 0, (4, 6, 30, 40)), (0, 1, (30, 20, 60, 50)), (1, 0, (10, 10, 50, 34))]:
    boxes[b, i] = x0, y0, x1, y1
    masks[b, i, y0:y1, x0:x1] = 1
    images[b, y0:y1, x0:x1] += 2.0
  return images, {"boxes": boxes, "classes": np.array([[1, 3, 0], [2, 0, 0]], np.int32), "masks": masks,
                  "valid": np.array([[1, 1, 0], [1, 0, 0]], np.float32)}


@pytest.fixture(scope="module")
def variables():
  return init(TINY())


def test_eval_outputs_and_static_counts(variables):
  model = TINY()
  assert set(variables["params"]) == {"backbone", "rpn", "box_head", "box_predictor", "mask_head", "mask_predictor"}
  images, _ = batch()
  # image_sizes: the images' true sizes before padding, which the boxes are clipped to.
  sizes = jnp.array([[40, 48], [64, 32]])
  out, inter = jax.jit(lambda v, x: model.apply(v, x, train=False, image_sizes=sizes, mutable=["intermediates"]))(
      variables, images)
  chex.assert_shape([out["boxes"], out["scores"], out["classes"], out["valid"], out["masks"]],
                    [(2, 12, 4), (2, 12), (2, 12), (2, 12), (2, 12, 28, 28)])
  chex.assert_type([out["boxes"], out["scores"], out["classes"], out["masks"]],
                   [jnp.float32, jnp.float32, jnp.int32, jnp.float32])
  chex.assert_shape(inter["intermediates"]["proposals"][0], (2, 80, 4))
  valid = np.asarray(out["valid"])
  assert valid.any()  # a fresh model's softmax gives every class ~1/(K+1) > 0.05
  assert np.all(np.diff(np.where(valid, out["scores"], -1), axis=1) <= 0)  # descending, padding last
  assert set(np.asarray(out["classes"])[valid].tolist()) <= set(range(1, K + 1))
  for i, (h, w) in enumerate(np.asarray(sizes)):
    boxes = np.asarray(out["boxes"][i])[valid[i]]
    assert (boxes >= 0).all() and (boxes[:, 0::2] <= w).all() and (boxes[:, 1::2] <= h).all()
  masks = np.asarray(out["masks"])
  assert ((masks[valid] > 0) & (masks[valid] < 1)).all() and (masks[~valid] == 0).all()
  # Parameter shapes do not depend on the input size (a fully convolutional backbone, RoI-pooled heads).
  chex.assert_trees_all_equal_shapes(jax.eval_shape(lambda: init(model, (1, 96, 128, 3)))["params"],
                                     variables["params"])


def test_faster_rcnn_has_no_mask_head():
  model = TINY(mask_head=False)  # shapes only (eval_shape): no compilation
  variables = jax.eval_shape(lambda: init(model))
  assert not any(k.startswith("mask") for k in variables["params"])
  images, targets = batch()
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, images)
  assert set(out) == {"boxes", "scores", "classes", "valid"}
  losses = jax.eval_shape(lambda v, x, t: model.apply(v, x, train=True, targets=t,
                                                      rngs={"sampling": jax.random.key(1)},
                                                      mutable=["batch_stats"])[0], variables, images, targets)
  assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "stats"}


def test_input_checks(variables):
  assert TINY().size_divisor == 32
  with pytest.raises(ValueError, match="divisible by 32"):
    TINY().init(jax.random.key(0), jnp.zeros((1, 64, 48, 3)), train=False)
  with pytest.raises(ValueError, match="num_classes"):
    TINY(num_classes=0).init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False)
  with pytest.raises(ValueError, match="targets"):
    jax.eval_shape(lambda v: TINY().apply(v, jnp.zeros((2, 64, 64, 3)), train=True,
                                          rngs={"sampling": jax.random.key(0)}, mutable=["batch_stats"]), variables)


def test_training_losses_and_gradients(variables):
  model = TINY()
  images, targets = batch()

  @jax.jit
  def step(params, targets, key):
    def loss_fn(p):
      out, _ = model.apply({"params": p, "batch_stats": variables["batch_stats"]}, images, train=True,
                           targets=targets, rngs={"sampling": key}, mutable=["batch_stats"])
      return sum(v for k, v in out.items() if k != "stats"), out
    return jax.value_and_grad(loss_fn, has_aux=True)(params)

  (loss, out), grads = step(variables["params"], targets, jax.random.key(1))
  assert set(out) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask",
                      "stats"}
  chex.assert_tree_all_finite((loss, out, grads))
  for name in ("loss_objectness", "loss_classifier", "loss_mask", "loss_box_reg", "loss_rpn_box_reg"):
    assert out[name] > 0, name
  # Fresh heads: cross-entropies at their uniform values (objectness logits ~0: log 2; K + 1 classes).
  np.testing.assert_allclose(out["loss_objectness"], np.log(2), rtol=0.05)
  np.testing.assert_allclose(out["loss_classifier"], np.log(K + 1), rtol=0.1)
  stats = out["stats"]
  assert 0 < stats["num_positive_anchors"] <= 128 and stats["num_proposals"] <= 120
  # The ground truth is appended to the proposals, so every real object gives positives; at most 25% of 64 RoIs.
  assert 1 <= stats["num_positive_rois"] <= 16 and stats["num_sampled_rois"] == 64
  for module in ("backbone", "rpn", "box_head", "box_predictor", "mask_head", "mask_predictor"):
    assert any(np.abs(g).max() > 0 for g in jax.tree.leaves(grads[module])), module
  # Sampling is a function of the key.
  (loss_again, _), _ = step(variables["params"], targets, jax.random.key(1))
  assert loss_again == loss
  (_, other), _ = step(variables["params"], targets, jax.random.key(2))
  assert other["loss_objectness"] != out["loss_objectness"]
  # No object at all (torchvision's empty targets): every sample is background, no box or mask loss.
  empty = dict(targets, valid=np.zeros_like(targets["valid"]))
  (_, out), grads = step(variables["params"], empty, jax.random.key(1))
  chex.assert_tree_all_finite(grads)
  assert out["loss_box_reg"] == out["loss_rpn_box_reg"] == out["loss_mask"] == 0
  assert out["stats"]["num_positive_rois"] == out["stats"]["num_positive_anchors"] == 0
  assert all(np.abs(g).max() == 0 for g in jax.tree.leaves(grads["mask_head"]))


@pytest.mark.parametrize("layers,frozen_bn", [(3, True), (0, True), (5, False), (2, False)])
def test_trainable_mask_is_torchvision_requires_grad(layers, frozen_bn):
  torchvision = import_torchvision()
  import torch  # pylint: disable=import-outside-toplevel
  norm = torchvision.ops.misc.FrozenBatchNorm2d if frozen_bn else torch.nn.BatchNorm2d
  extractor = torchvision.models.detection.backbone_utils._resnet_fpn_extractor  # pylint: disable=protected-access
  backbone = extractor(torchvision.models.resnet50(norm_layer=norm), layers)
  requires_grad = {f"backbone.{k}": p.requires_grad for k, p in backbone.named_parameters()}
  state = {f"backbone.{k}": v.numpy() for k, v in backbone.state_dict().items()}
  params, _, sources, _ = from_torchvision(state)
  mask = traverse_util.flatten_dict(trainable_mask(traverse_util.unflatten_dict(params), frozen_bn=frozen_bn,
                                                   trainable_layers=layers))
  want = {p: requires_grad.get(sources[("params", *p)], False) for p in params}  # a buffer never trains
  assert mask == want
  assert any(v for p, v in want.items() if p[1] == "body") == (layers > 0)
  # Outside the body everything trains.
  head = trainable_mask({"rpn": {"conv": {"kernel": 0}}, "backbone": {"fpn": {"x": {"bias": 0}}}})
  assert jax.tree.leaves(head) == [True, True]


def test_bfloat16_compute_gives_float32_outputs(variables):
  """dtype=bfloat16 computes in bfloat16 with float32 parameters; boxes, scores, masks and losses stay float32
  (shapes and dtypes by eval_shape: no compilation)."""
  model = TINY(dtype=jnp.bfloat16)
  images, targets = batch()
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, images)
  assert {k: v.dtype for k, v in out.items()} == {"boxes": jnp.float32, "scores": jnp.float32,
                                                   "classes": jnp.int32, "valid": jnp.bool_, "masks": jnp.float32}
  losses, _ = jax.eval_shape(lambda v, x, t: model.apply(v, x, train=True, targets=t, mutable=["batch_stats"],
                                                         rngs={"sampling": jax.random.key(0)}),
                             variables, images, targets)
  assert all(v.dtype == jnp.float32 for k, v in losses.items() if k != "stats")
  assert jax.tree.map(lambda p: p.dtype, variables["params"]) == jax.tree.map(
      lambda p: p.dtype, jax.eval_shape(lambda: init(model))["params"])
