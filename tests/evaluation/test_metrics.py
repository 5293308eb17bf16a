"""Tests of segjax.evaluation.metrics against brute-force pixel-level references."""

import json
import math
import warnings

import chex
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest
from absl.testing import parameterized

from segjax.evaluation import metrics


def reference_confusion(labels, preds, weights, num_classes):
  """Python loop over pixels."""
  cm = np.zeros((num_classes, num_classes), np.int64)
  for y, p, w in zip(np.ravel(labels), np.ravel(preds), np.ravel(weights)):
    if w > 0:
      cm[int(y), int(p)] += 1
  return cm


def reference_metrics(labels, preds, weights, num_classes):
  """Metrics from sets of pixel positions, never from a confusion matrix."""
  pixels = [(int(y), int(p)) for y, p, w in
            zip(np.ravel(labels), np.ravel(preds), np.ravel(weights)) if w > 0]
  n = len(pixels)
  per_class = []
  for c in range(num_classes):
    truth = {i for i, (y, _) in enumerate(pixels) if y == c}
    predicted = {i for i, (_, p) in enumerate(pixels) if p == c}
    hit = len(truth & predicted)
    union = len(truth | predicted)
    per_class.append(dict(
        iou=hit / union if union else math.nan,
        accuracy=hit / len(truth) if truth else math.nan,
        dice=2 * hit / (len(truth) + len(predicted)) if union else math.nan,
        precision=hit / len(predicted) if predicted else math.nan,
        pixel_count=len(truth),
        pred_count=len(predicted)))

  def mean_of_defined(key):
    values = [c[key] for c in per_class if not math.isnan(c[key])]
    return sum(values) / len(values) if values else math.nan

  correct = sum(1 for y, p in pixels if y == p)
  return dict(
      pixel_accuracy=correct / n if n else math.nan,
      mean_accuracy=mean_of_defined("accuracy"),
      mean_iou=mean_of_defined("iou"),
      fw_iou=(sum(c["pixel_count"] * c["iou"] for c in per_class
                  if c["pixel_count"]) / n) if n else math.nan,
      mean_dice=mean_of_defined("dice"),
      mean_precision=mean_of_defined("precision"),
      per_class=per_class)


def assert_metrics_equal(got, want):
  for key in ("pixel_accuracy", "mean_accuracy", "mean_iou", "fw_iou",
              "mean_dice", "mean_precision"):
    np.testing.assert_allclose(got[key], want[key], rtol=1e-12, err_msg=key)
  # Recall is the FCN accuracy and F1 is Dice, under their other names.
  np.testing.assert_allclose(got["mean_recall"], want["mean_accuracy"], rtol=1e-12)
  np.testing.assert_allclose(got["mean_f1"], want["mean_dice"], rtol=1e-12)
  assert len(got["per_class"]) == len(want["per_class"])
  for i, (g, w) in enumerate(zip(got["per_class"], want["per_class"])):
    for key, ref in (("iou", "iou"), ("accuracy", "accuracy"), ("dice", "dice"), ("precision", "precision"),
                     ("recall", "accuracy"), ("f1", "dice")):
      np.testing.assert_allclose(g[key], w[ref], rtol=1e-12,
                                 err_msg=f"class {i} {key}")
    assert g["pixel_count"] == w["pixel_count"]
    assert g["pred_count"] == w["pred_count"]


def check_against_reference(labels, preds, weights, num_classes):
  cm = jax.jit(metrics.confusion_matrix, static_argnums=3)(
      labels, preds, weights, num_classes)
  chex.assert_shape(cm, (num_classes, num_classes))
  chex.assert_type(cm, jnp.int32)
  np.testing.assert_array_equal(
      cm, reference_confusion(labels, preds, weights, num_classes))
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    got = metrics.compute_metrics(np.asarray(cm))
  assert_metrics_equal(got, reference_metrics(labels, preds, weights,
                                              num_classes))
  return got


class ConfusionMatrixVariantsTest(chex.TestCase):
  """The counting ops traced under jit and run eagerly (chex variants) against the pixel loop."""

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters("int32", "uint8")
  def test_confusion_matrices_match_the_pixel_loop(self, dtype):
    rng = np.random.default_rng(5)
    k = 20  # with uint8 ids, label * K overflows unless cast first
    labels = rng.integers(0, k, (3, 5, 6)).astype(dtype)
    preds = np.where(rng.random(labels.shape) < 0.5, labels, rng.integers(0, k, labels.shape)).astype(dtype)
    weights = (rng.random(labels.shape) > 0.2).astype(np.float32)
    cm = self.variant(lambda y, p, w: metrics.confusion_matrix(y, p, w, k))(labels, preds, weights)
    cms = self.variant(lambda y, p, w: metrics.confusion_matrices(y, p, w, k))(labels, preds, weights)
    chex.assert_shape([cm, cms], [(k, k), (3, k, k)])
    chex.assert_type([cm, cms], jnp.int32)
    np.testing.assert_array_equal(cm, reference_confusion(labels, preds, weights, k))
    for i in range(3):
      np.testing.assert_array_equal(cms[i], reference_confusion(labels[i], preds[i], weights[i], k))
    # A stray id >= K with weight 1 lands in no cell.
    labels[0, 0, 0], weights[0, 0, 0] = 255, 1.0
    cm = self.variant(lambda y, p, w: metrics.confusion_matrix(y, p, w, k))(labels, preds, weights)
    assert int(cm.sum()) == int(weights.sum()) - 1


def test_random_maps_with_ignore():
  rng = np.random.default_rng(0)
  k = 7
  labels = rng.integers(0, k, (2, 9, 11))
  preds = np.where(rng.random(labels.shape) < 0.6, labels,
                   rng.integers(0, k, labels.shape))
  weights = (rng.random(labels.shape) > 0.2).astype(np.float32)
  check_against_reference(labels, preds, weights, k)


def test_absent_classes():
  rng = np.random.default_rng(1)
  k = 6
  shape = (3, 8, 8)
  # Ground truth uses {0, 1, 2, 3}, predictions {0, 1, 2, 4}: class 3 is
  # never predicted, class 4 only predicted, class 5 absent from both.
  labels = rng.choice([0, 1, 2, 3], shape)
  preds = rng.choice([0, 1, 2, 4], shape)
  weights = rng.random(shape) > 0.25
  # Class 5 present only on ignored pixels must still count as absent.
  labels[0, 0, 0], preds[0, 0, 0], weights[0, 0, 0] = 5, 5, False
  got = check_against_reference(labels, preds, weights, k)
  per_class = got["per_class"]
  assert per_class[3]["iou"] == 0 and per_class[3]["dice"] == 0
  assert per_class[3]["accuracy"] == 0
  assert per_class[4]["iou"] == 0 and math.isnan(per_class[4]["accuracy"])
  assert math.isnan(per_class[5]["iou"]) and math.isnan(per_class[5]["dice"])
  assert math.isnan(per_class[5]["accuracy"])


def test_hand_computed_example():
  # Class 2 absent everywhere; class 3 predicted once but never true.
  cm = np.array([[3, 1, 0, 0],
                 [2, 4, 0, 1],
                 [0, 0, 0, 0],
                 [0, 0, 0, 0]])
  got = metrics.compute_metrics(cm, class_names=["a", "b", "c", "d"])
  assert got["pixel_accuracy"] == pytest.approx(7 / 11)
  assert got["mean_accuracy"] == pytest.approx((3 / 4 + 4 / 7) / 2)
  # IoU: a 3/6, b 4/8, c undefined, d 0/1.
  assert got["mean_iou"] == pytest.approx(1 / 3)
  assert got["fw_iou"] == pytest.approx(0.5)
  # Dice: a 6/9, b 8/12, d 0.
  assert got["mean_dice"] == pytest.approx(4 / 9)
  assert got["mean_f1"] == pytest.approx(4 / 9)
  # Precision: a 3/5, b 4/5, c undefined, d 0/1.
  assert got["mean_precision"] == pytest.approx(7 / 15)
  assert got["mean_recall"] == got["mean_accuracy"]
  assert [c["name"] for c in got["per_class"]] == ["a", "b", "c", "d"]
  assert [c["pixel_count"] for c in got["per_class"]] == [4, 7, 0, 0]
  assert [c["pred_count"] for c in got["per_class"]] == [5, 5, 0, 1]
  assert got["per_class"][0]["precision"] == pytest.approx(3 / 5)
  assert math.isnan(got["per_class"][2]["precision"])


def test_unlabelled_pixels_are_misses_of_their_class():
  # The hand-computed example plus 2 pixels of "a" and 1 of "c" that the prediction left void (a panoptic map).
  cm = np.array([[3, 1, 0, 0],
                 [2, 4, 0, 1],
                 [0, 0, 0, 0],
                 [0, 0, 0, 0]])
  got = metrics.compute_metrics(cm, class_names=["a", "b", "c", "d"], unlabelled=[2, 0, 1, 0])
  assert got["pixel_accuracy"] == pytest.approx(7 / 14)
  # IoU: a 3/(6+2), b 4/8, c 0/1 (now in the ground truth, never predicted), d 0/1.
  assert got["mean_iou"] == pytest.approx((3 / 8 + 1 / 2) / 4)
  assert [c["pixel_count"] for c in got["per_class"]] == [6, 7, 1, 0]
  assert [c["pred_count"] for c in got["per_class"]] == [5, 5, 0, 1]
  assert got["per_class"][0]["recall"] == pytest.approx(3 / 6) and math.isnan(got["per_class"][2]["precision"])
  with pytest.raises(ValueError, match="one count per class"):
    metrics.compute_metrics(cm, unlabelled=[1, 2])


def test_all_ignored_gives_nan_without_warnings():
  labels = np.zeros((2, 4, 4), np.int32)
  cm = metrics.confusion_matrix(labels, labels, np.zeros(labels.shape), 3)
  np.testing.assert_array_equal(cm, np.zeros((3, 3)))
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    got = metrics.compute_metrics(np.asarray(cm))
  for key in ("pixel_accuracy", "mean_accuracy", "mean_iou", "fw_iou",
              "mean_dice", "mean_precision", "mean_recall", "mean_f1"):
    assert math.isnan(got[key]), key
  for c in got["per_class"]:
    assert all(math.isnan(c[key])
               for key in ("iou", "accuracy", "dice", "precision", "recall",
                           "f1"))


def test_single_class():
  labels = np.zeros((1, 3, 5), np.int32)
  weights = np.ones(labels.shape, bool)
  weights[0, 0, :2] = False
  got = check_against_reference(labels, labels, weights, 1)
  assert got["mean_iou"] == 1 and got["fw_iou"] == 1
  assert got["per_class"][0]["pixel_count"] == 13


def test_two_classes():
  labels = np.array([[0, 0, 1, 1, 1]])
  preds = np.array([[0, 1, 1, 1, 0]])
  got = check_against_reference(labels, preds, np.ones(labels.shape), 2)
  assert got["per_class"][0]["iou"] == pytest.approx(1 / 3)
  assert got["per_class"][1]["iou"] == pytest.approx(2 / 4)
  # All wrong: both classes present, IoU 0, not NaN.
  check_against_reference(labels, 1 - labels, np.ones(labels.shape), 2)


def test_uint8_labels_and_out_of_range():
  rng = np.random.default_rng(2)
  k = 20  # labels * K overflows uint8 unless cast first.
  labels = rng.integers(0, k, (2, 5, 6)).astype(np.uint8)
  preds = rng.integers(0, k, labels.shape).astype(np.uint8)
  weights = np.ones(labels.shape, np.float32)
  check_against_reference(labels, preds, weights, k)
  # A stray 255 label with weight 1 must not land in another cell.
  labels[0, 0, 0] = 255
  cm = metrics.confusion_matrix(labels, preds, weights, k)
  assert int(cm.sum()) == labels.size - 1


def test_sharded_under_jit():
  mesh = jax.make_mesh((8,), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))
  sharding = NamedSharding(mesh, P("data"))
  rng = np.random.default_rng(3)
  k = 5
  labels = rng.integers(0, k, (16, 6, 10)).astype(np.int32)
  preds = rng.integers(0, k, labels.shape).astype(np.int32)
  weights = (rng.random(labels.shape) > 0.3).astype(np.float32)
  args = [jax.device_put(x, sharding) for x in (labels, preds, weights)]
  fn = jax.jit(metrics.confusion_matrix, static_argnums=3)
  cm = fn(*args, k)
  assert cm.sharding.is_fully_replicated
  want = reference_confusion(labels, preds, weights, k)
  np.testing.assert_array_equal(cm, want)
  np.testing.assert_array_equal(fn(*args, k), cm)


def test_json_nan_becomes_null():
  cm = np.array([[2, 0, 0], [1, 0, 0], [0, 0, 0]])
  got = metrics.compute_metrics(cm)
  text = json.dumps(metrics.to_json_dict(got), allow_nan=False)
  back = json.loads(text)
  assert back["per_class"][2]["iou"] is None
  assert back["per_class"][1]["iou"] == 0
  assert back["pixel_accuracy"] == pytest.approx(2 / 3)
  empty = metrics.to_json_dict(metrics.compute_metrics(np.zeros((2, 2), int)))
  assert empty["mean_iou"] is None


def test_format_table():
  cm = np.array([[3, 1, 0], [2, 4, 0], [0, 0, 0]])
  text = metrics.format_table(
      metrics.compute_metrics(cm, ["road", "sky", "cat"]))
  lines = text.splitlines()
  assert lines[0].split() == ["class", "IoU", "acc", "precision", "F1",
                              "pixels"]
  # road: IoU 3/6, acc 3/4, precision 3/5, F1 6/9.
  assert lines[2].split() == ["road", "50.00", "75.00", "60.00", "66.67", "4"]
  assert lines[4].split() == ["cat", "-", "-", "-", "-", "0"]
  assert "mean IoU" in text and "53.57" in text
  assert "pixel accuracy" in text and "70.00" in text
  assert "mean F1 (Dice)" in text and "Dice" not in lines[0]
