"""Metric conventions of other toolkits, per-image statistics and reduce_zero_label.

Each convention is checked against an independent transcription of the other toolkit's code, in torch, working
from per-image label/prediction arrays with ignore label 255 (never from segjax's confusion matrices), or
against the toolkit itself (torchmetrics).
"""

import dataclasses
import math
import warnings

import chex
import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import ml_collections
import numpy as np
import pytest
import torch

from segjax.evaluation import conventions, metrics
from segjax.data import datasets
from segjax.data import folder
from segjax.data import pipeline
from tests.conftest import import_torchvision, semantic_eval_batches

IGNORE = 255


# ------------------------------------------------------------------ references


def mmseg_reference(labels, preds, k, nan_to_num=None):
  """MMSegmentation 1.x IoUMetric: intersect_and_union per image, total_area_to_metrics, nanmean summary."""

  def intersect_and_union(pred_label, label, num_classes, ignore_index):
    mask = label != ignore_index
    pred_label = pred_label[mask]
    label = label[mask]
    intersect = pred_label[pred_label == label]
    area_intersect = torch.histc(intersect.float(), bins=num_classes, min=0, max=num_classes - 1)
    area_pred_label = torch.histc(pred_label.float(), bins=num_classes, min=0, max=num_classes - 1)
    area_label = torch.histc(label.float(), bins=num_classes, min=0, max=num_classes - 1)
    area_union = area_pred_label + area_label - area_intersect
    return area_intersect, area_union, area_pred_label, area_label

  def f_score(precision, recall, beta=1):
    return (1 + beta**2) * (precision * recall) / ((beta**2 * precision) + recall)

  results = [intersect_and_union(torch.from_numpy(p), torch.from_numpy(y), k, IGNORE) for y, p in zip(labels, preds)]
  inter, union, pred_area, label_area = (sum(r[i] for r in results) for i in range(4))
  ret = {"aAcc": inter.sum() / label_area.sum()}
  ret["IoU"] = inter / union
  ret["Acc"] = inter / label_area
  ret["Dice"] = 2 * inter / (pred_area + label_area)
  precision = inter / pred_area
  recall = inter / label_area
  ret["Fscore"] = torch.tensor([f_score(x[0], x[1], 1) for x in zip(precision, recall)])
  ret["Precision"] = precision
  ret["Recall"] = recall
  ret = {key: value.numpy() for key, value in ret.items()}
  if nan_to_num is not None:
    ret = {key: np.nan_to_num(value, nan=nan_to_num) for key, value in ret.items()}
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of all-NaN
    out = {("aAcc" if key == "aAcc" else "m" + key): float(np.nanmean(value)) for key, value in ret.items()}
  out.update({key: value for key, value in ret.items() if key != "aAcc"})
  return out


def torchvision_reference(labels, preds, k):
  """torchvision references/segmentation/utils.py ConfusionMatrix (update per image, compute, iu.mean())."""
  mat = torch.zeros((k, k), dtype=torch.int64)
  for y, p in zip(labels, preds):
    a = torch.from_numpy(y).flatten().to(torch.int64)
    b = torch.from_numpy(p).flatten().to(torch.int64)
    keep = (a >= 0) & (a < k)
    inds = k * a[keep] + b[keep]
    mat += torch.bincount(inds, minlength=k**2).reshape(k, k)
  h = mat.float()
  acc_global = torch.diag(h).sum() / h.sum()
  acc = torch.diag(h) / h.sum(1)
  iu = torch.diag(h) / (h.sum(1) + h.sum(0) - torch.diag(h))
  return dict(global_correct=acc_global.item(), mean_iou=iu.mean().item(), acc=acc.numpy(), iu=iu.numpy())


def smp_get_stats(labels, preds, k):
  """segmentation_models_pytorch get_stats(mode="multiclass", ignore_index=255): [N, K] tp, fp, fn, tn."""
  output = torch.from_numpy(np.stack(preds)).long()
  target = torch.from_numpy(np.stack(labels)).long()
  batch_size, *dims = output.shape
  num_elements = torch.prod(torch.tensor(dims)).long()
  ignore = target == IGNORE
  output = torch.where(ignore, -1, output)
  target = torch.where(ignore, -1, target)
  ignore_per_sample = ignore.view(batch_size, -1).sum(1)
  counts = [torch.zeros(batch_size, k, dtype=torch.long) for _ in range(4)]
  for i in range(batch_size):
    matched = torch.where(output[i] == target[i], target[i], -1)
    tp = torch.histc(matched.float(), bins=k, min=0, max=k - 1)
    fp = torch.histc(output[i].float(), bins=k, min=0, max=k - 1) - tp
    fn = torch.histc(target[i].float(), bins=k, min=0, max=k - 1) - tp
    tn = num_elements - tp - fp - fn - ignore_per_sample[i]
    for c, v in zip(counts, (tp, fp, fn, tn)):
      c[i] = v.long()
  return counts


def smp_metric(metric_fn, tp, fp, fn, tn, reduction, class_weights=None, zero_division=1.0):
  """segmentation_models_pytorch metrics.functional._compute_metric."""

  def handle_zero_division(x):
    value = torch.tensor(zero_division, dtype=x.dtype)
    return torch.where(torch.isnan(x), value, x)

  class_weights = torch.tensor(class_weights if class_weights is not None else 1.0)
  class_weights = class_weights / class_weights.sum()
  if reduction == "micro":
    return metric_fn(tp.sum(), fp.sum(), fn.sum(), tn.sum())
  if reduction in ("macro", "weighted"):
    score = handle_zero_division(metric_fn(tp.sum(0), fp.sum(0), fn.sum(0), tn.sum(0)))
    # smp 0.6.0: "weighted" sums the normalised-weight products, "macro" averages them (its weight is 1).
    return (score * class_weights).sum() if reduction == "weighted" else (score * class_weights).mean()
  if reduction == "micro-imagewise":
    return handle_zero_division(metric_fn(tp.sum(1), fp.sum(1), fn.sum(1), tn.sum(1))).mean()
  assert reduction == "macro-imagewise"
  return (handle_zero_division(metric_fn(tp, fp, fn, tn)).mean(0) * class_weights).mean()


SMP_FNS = dict(
    iou_score=lambda tp, fp, fn, tn: tp / (tp + fp + fn),
    f1_score=lambda tp, fp, fn, tn: (2 * tp) / (2 * tp + fn + fp),
    accuracy=lambda tp, fp, fn, tn: (tp + tn) / (tp + fp + fn + tn),
    precision=lambda tp, fp, fn, tn: tp / (tp + fp),
    recall=lambda tp, fp, fn, tn: tp / (tp + fn))


def smp_reference(labels, preds, k, reduction, class_weights=None, zero_division=1.0):
  tp, fp, fn, tn = smp_get_stats(labels, preds, k)
  return {name: smp_metric(fn_, tp, fp, fn, tn, reduction, class_weights, zero_division).item()
          for name, fn_ in SMP_FNS.items()}


def import_torchmetrics_classification():
  """torchmetrics.classification; torchvision (which torchmetrics imports when installed) first, through the
  conftest helper that copes with PyPI's CUDA build of it."""
  import_torchvision(required=False)
  from torchmetrics import classification  # pylint: disable=import-outside-toplevel
  return classification


def torchmetrics_reference(labels, preds, k):
  """torchmetrics itself, fed every image with ignore_index=255."""
  tmc = import_torchmetrics_classification()
  kw = dict(num_classes=k, ignore_index=IGNORE)
  made = dict(
      pixel_accuracy=tmc.MulticlassAccuracy(average="micro", **kw),
      mean_accuracy=tmc.MulticlassAccuracy(average="macro", **kw),
      mean_iou=tmc.MulticlassJaccardIndex(average="macro", **kw),
      mean_precision=tmc.MulticlassPrecision(average="macro", **kw),
      mean_recall=tmc.MulticlassRecall(average="macro", **kw),
      mean_f1=tmc.MulticlassF1Score(average="macro", **kw),
      iou=tmc.MulticlassJaccardIndex(average="none", **kw))
  for metric in made.values():
    for y, p in zip(labels, preds):
      metric.update(torch.from_numpy(p).long()[None], torch.from_numpy(y).long()[None])
  return {key: metric.compute().numpy() for key, metric in made.items()}


# ------------------------------------------------------------------ cases


def ours(labels, preds, k, **kwargs):
  """segjax: per-image matrices on device (jit), then every convention on host."""
  labels, preds = np.stack(labels), np.stack(preds)
  weights = (labels != IGNORE).astype(np.float32)
  fn = jax.jit(metrics.confusion_matrices, static_argnums=3)
  cms = np.asarray(fn(np.where(labels == IGNORE, 0, labels), preds, weights, k))
  return conventions.compute_conventions(cms.sum(0), metrics.image_stats(cms), **kwargs)


def numpy_matrices(labels, preds, k):
  """[N, K, K] per-image counts of the non-ignored pixels, with np.add.at."""
  cms = np.zeros((len(labels), k, k), np.int64)
  for cm, y, p in zip(cms, labels, preds):
    keep = y != IGNORE
    np.add.at(cm, (y[keep].astype(int), p[keep].astype(int)), 1)
  return cms


def random_case(seed=0, k=6, n=4, shape=(7, 9)):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, k, (n, *shape))
  preds = np.where(rng.random(labels.shape) < 0.5, labels, rng.integers(0, k, labels.shape))
  labels = np.where(rng.random(labels.shape) < 0.2, IGNORE, labels)
  return list(labels.astype(np.uint8)), list(preds.astype(np.uint8)), k


def edge_case(seed=1, k=6):
  """Class 3 never predicted, 4 only predicted, 5 nowhere; class 2 present and predicted but never hit; one
  all-ignore image; one image with a single class."""
  rng = np.random.default_rng(seed)
  shape = (6, 8)
  labels, preds = [], []
  for _ in range(3):
    y = rng.choice([0, 1, 3], shape)
    p = np.where(rng.random(shape) < 0.6, y, rng.choice([0, 1, 4], shape))
    p = np.where(y == 3, 0, p)  # class 3 is never predicted
    labels.append(y)
    preds.append(p)
  labels[0][0, :3], preds[0][0, :3] = 2, 1  # class 2 in ground truth, predicted as 1
  labels[1][1, :3], preds[1][1, :3] = 1, 2  # class 2 predicted on class 1: never a hit
  labels.append(np.full(shape, IGNORE))  # all-ignore image (its predictions must not count)
  preds.append(rng.choice([0, 5], shape))
  labels.append(np.zeros(shape, int))  # one class only, perfectly predicted
  preds.append(np.zeros(shape, int))
  labels[2][2, 2], preds[2][2, 2] = IGNORE, 5  # class 5 predicted only on an ignored pixel
  return [y.astype(np.uint8) for y in labels], [p.astype(np.uint8) for p in preds], k


def empty_case(k=4):
  rng = np.random.default_rng(2)
  return [np.full((5, 5), IGNORE, np.uint8)] * 2, [rng.integers(0, k, (5, 5)).astype(np.uint8)] * 2, k


CASES = {"random": random_case, "random_k2": lambda: random_case(3, k=2, n=3, shape=(4, 5)), "edge": edge_case,
         "empty": empty_case}


def assert_close(got: dict, want: dict, name: str):
  for key, value in want.items():
    # rtol 1e-6: the references compute in float32, segjax in float64. NaN must sit where the reference's is.
    np.testing.assert_allclose(np.asarray(got[key], np.float64), np.asarray(value, np.float64), rtol=1e-6,
                               atol=0, err_msg=f"{name}: {key}")


# ------------------------------------------------------------------ conventions


@pytest.mark.parametrize("case", list(CASES))
def test_conventions_match_other_toolkits(case):
  labels, preds, k = CASES[case]()
  class_weights = list(np.arange(1.0, k + 1))
  got = ours(labels, preds, k, class_weights=class_weights)
  assert set(got) == set(conventions.CONVENTIONS)
  assert_close(got["mmseg"], mmseg_reference(labels, preds, k), "mmseg")
  assert_close(got["torchvision"], torchvision_reference(labels, preds, k), "torchvision")
  for name, reduction in [("smp_micro", "micro"), ("smp_macro", "macro"), ("smp_micro_imagewise", "micro-imagewise"),
                          ("smp_macro_imagewise", "macro-imagewise")]:
    assert_close(got[name], smp_reference(labels, preds, k, reduction), name)
  assert_close(got["smp_weighted"], smp_reference(labels, preds, k, "weighted", class_weights), "smp_weighted")
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # torchmetrics warns about absent classes / empty input
    assert_close(got["torchmetrics"], torchmetrics_reference(labels, preds, k), "torchmetrics")
  segjax = metrics.compute_metrics(numpy_matrices(labels, preds, k).sum(0))
  assert_close(got["segjax"], {key: value for key, value in segjax.items() if key != "per_class"}, "segjax")


def test_options_nan_to_num_and_zero_division():
  labels, preds, k = edge_case()
  got = ours(labels, preds, k, nan_to_num=0.0, zero_division=0.0)
  assert_close(got["mmseg"], mmseg_reference(labels, preds, k, nan_to_num=0.0), "mmseg nan_to_num")
  for name, reduction in [("smp_macro", "macro"), ("smp_macro_imagewise", "macro-imagewise")]:
    assert_close(got[name], smp_reference(labels, preds, k, reduction, zero_division=0.0), name)
  # Without per-image stats or class weights those conventions are left out, not guessed.
  cm = numpy_matrices(labels, preds, k).sum(0)
  assert set(conventions.compute_conventions(cm)) == {"segjax", "mmseg", "torchvision", "torchmetrics", "smp_micro",
                                                  "smp_macro"}
  with pytest.raises(ValueError, match="does not match the confusion matrix"):
    conventions.compute_conventions(cm + np.eye(k, dtype=int), metrics.image_stats(cm[None]))


def test_where_conventions_differ_on_absent_classes():
  """The documented differences, on a hand-made matrix: class 2 absent everywhere, 3 predicted but absent."""
  cm = np.array([[3, 1, 0, 0], [2, 4, 0, 1], [0, 0, 0, 0], [0, 0, 0, 0]])
  got = conventions.compute_conventions(cm)
  assert got["segjax"]["mean_iou"] == pytest.approx(1 / 3)
  assert got["mmseg"]["mIoU"] == pytest.approx(1 / 3)
  assert got["torchmetrics"]["mean_iou"] == pytest.approx(1 / 3)
  assert math.isnan(got["torchvision"]["mean_iou"])
  assert got["smp_macro"]["iou_score"] == pytest.approx((0.5 + 0.5 + 1 + 0) / 4)  # absent class counts as 1
  assert got["smp_micro"]["f1_score"] == pytest.approx(7 / 11)  # micro F1 = pixel accuracy
  # mmseg's mFscore drops classes never hit (class 3: 0/0), its mDice counts them as 0.
  assert got["mmseg"]["mFscore"] == pytest.approx(2 / 3) and got["mmseg"]["mDice"] == pytest.approx(4 / 9)


# ------------------------------------------------------------------ per-image statistics


def test_confusion_matrices_sharded_sum_to_confusion_matrix():
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  sharding = NamedSharding(mesh, P("data"))
  rng = np.random.default_rng(5)
  k = 5
  labels = rng.integers(0, k, (16, 6, 10)).astype(np.int32)
  preds = rng.integers(0, k, labels.shape).astype(np.int32)
  weights = (rng.random(labels.shape) > 0.3).astype(np.float32)
  labels[3, 0, 0] = 255  # out of range with weight 1: not counted anywhere
  args = [jax.device_put(x, sharding) for x in (labels, preds, weights)]
  cms = jax.jit(metrics.confusion_matrices, static_argnums=3)(*args, k)
  chex.assert_shape(cms, (16, k, k))
  chex.assert_type(cms, np.int32)
  want = np.zeros((16, k, k), np.int64)
  for i in range(16):
    keep = (weights[i] > 0) & (labels[i] < k)
    np.add.at(want[i], (labels[i][keep], preds[i][keep]), 1)
  np.testing.assert_array_equal(cms, want)
  np.testing.assert_array_equal(np.asarray(cms).sum(0),
                                jax.jit(metrics.confusion_matrix, static_argnums=3)(*args, k))


def test_image_stats_and_scores():
  labels, preds, k = edge_case()
  cms = numpy_matrices(labels, preds, k)
  stats = metrics.image_stats(cms)
  for got, want in zip((stats[key] for key in ("tp", "fp", "fn", "tn")), smp_get_stats(labels, preds, k)):
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, want.numpy())
  scores = metrics.image_scores(cms)
  for i, (y, p) in enumerate(zip(labels, preds)):
    valid = y != IGNORE
    ious = [np.sum((y == c) & (p == c) & valid) / np.sum(((y == c) | (p == c)) & valid)
            for c in range(k) if np.any(((y == c) | (p == c)) & valid)]
    if ious:
      assert scores[i] == pytest.approx(np.mean(ious), rel=1e-12)
    else:
      assert math.isnan(scores[i])
  assert math.isnan(scores[3]) and scores[4] == 1


# ------------------------------------------------------------------ reduce_zero_label


def mmseg_reduce_zero_label(gt):
  """mmseg LoadAnnotations with reduce_zero_label=True, on a uint8 mask, as written there."""
  gt = gt.copy()
  gt[gt == 0] = 255
  gt = gt - 1
  gt[gt == 254] = 255
  return gt


def test_reduce_zero_label_matches_mmseg():
  rng = np.random.default_rng(6)
  k = 5
  raw = rng.integers(0, k + 1, (9, 11)).astype(np.uint8)
  raw[rng.random(raw.shape) < 0.2] = IGNORE
  want = mmseg_reduce_zero_label(raw)
  # The reference on the cases by hand: 0 -> ignored, c -> c - 1, ignored stays ignored.
  np.testing.assert_array_equal(mmseg_reduce_zero_label(np.array([0, 1, 5, IGNORE], np.uint8)), [IGNORE, 0, 4, IGNORE])
  image = rng.integers(0, 256, (9, 11, 3)).astype(np.uint8)
  element = {"image": image, "label": raw[..., None], "filename": "x"}
  ex = pipeline.to_example(element, IGNORE, k, reduce_zero_label=True)
  # The ignore -> weight rule: weight 0 and label 0 where the reduced mask holds the ignore label.
  np.testing.assert_array_equal(ex.weight, (want != IGNORE).astype(np.float32))
  np.testing.assert_array_equal(ex.label, np.where(want != IGNORE, want, 0))
  # The training crop and the eval batches read the spec's flag.
  spec = dataclasses.replace(datasets.DATASETS["shapes"], class_names=tuple("abcde"), ignore_label=IGNORE,
                             reduce_zero_label=True)
  crop = pipeline.RandomCrop((9, 11), spec.ignore_label, spec.num_classes, spec.reduce_zero_label)
  np.testing.assert_array_equal(crop.random_map(element, np.random.default_rng(0))["label"], ex.label)
  batch = next(semantic_eval_batches([element], spec=spec, batch_size=1, size=(9, 11), num_threads=1))
  np.testing.assert_array_equal(batch["label"][0], ex.label)
  np.testing.assert_array_equal(batch["weight"][0], ex.weight)
  # Raw ids run 1..K: K + 1 is out of range and the message says why.
  raw[0, 0] = k + 1
  with pytest.raises(ValueError, match=r"label id 6 .* outside 1\.\.5 .*reduce_zero_label"):
    pipeline.to_example(dict(element, label=raw), IGNORE, k, reduce_zero_label=True)


def test_reduce_zero_label_in_get_spec():
  block = ml_collections.ConfigDict(dict(name="folder", reduce_zero_label=True, folder=folder.config_block()))
  block.folder.images_dir, block.folder.masks_dir = "/images", "/masks"
  block.folder.class_names = ("wall", "floor")
  assert datasets.get_spec(block).reduce_zero_label
  block.reduce_zero_label = False
  assert not datasets.get_spec(block).reduce_zero_label
  assert not datasets.get_spec("ade20k").reduce_zero_label
  for name, why in (("ade20k", "stored reduced"), ("shapes", "already match")):
    with pytest.raises(ValueError, match=f"reduce_zero_label=True with dataset '{name}'.*{why}"):
      datasets.get_spec(ml_collections.ConfigDict(dict(name=name, reduce_zero_label=True)))


def test_config_validates_convention():
  from segjax import config as config_lib  # pylint: disable=import-outside-toplevel
  c = config_lib.default_config()
  config_lib.validate(c)
  c.metrics.convention = "smp_micro_imagewise"
  config_lib.validate(c)
  c.metrics.convention = "miou"
  with pytest.raises(ValueError, match=r"config.metrics.convention='miou'.*'smp_macro_imagewise'"):
    config_lib.validate(c)
