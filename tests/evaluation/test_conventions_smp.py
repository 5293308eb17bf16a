"""segjax's smp_* conventions against segmentation_models_pytorch itself (not a transcription of it).

The same random label maps go to smp's `get_stats(mode="multiclass", ignore_index=255)` and metric functions, and
to segjax's path: per-image confusion matrices on device (as the semantic evaluator builds them), `image_stats`,
then `compute_conventions`. A transcription can copy a misreading of smp's code (smp_weighted used to be scaled by
1/K in both segjax and tests/evaluation/test_conventions.py); smp itself cannot.
"""

import jax
import numpy as np
import pytest

from segjax.evaluation import conventions, metrics
from tests.conftest import import_torchvision

IGNORE = 255
METRICS = ("iou_score", "f1_score", "accuracy", "precision", "recall")
REDUCTIONS = {"smp_micro": "micro", "smp_macro": "macro", "smp_weighted": "weighted",
              "smp_micro_imagewise": "micro-imagewise", "smp_macro_imagewise": "macro-imagewise"}


def import_smp():
  # smp imports torchvision, whose PyPI wheel fails to load beside CPU torch unless the conftest helper patches it.
  import_torchvision()
  return pytest.importorskip("segmentation_models_pytorch")


def label_maps(seed: int, k: int, n: int = 5, shape=(12, 10)):
  """n label/prediction maps with ignored pixels, classes absent from some images, one class nowhere in the ground
  truth (only predicted), one class nowhere at all, and one all-ignore image: every 0/0 smp can meet."""
  rng = np.random.default_rng(seed)
  labels = np.empty((n, *shape), np.int64)
  for i in range(n):
    # Each image draws from its own subset of classes 0..k-3, so some classes are absent from some images.
    present = rng.choice(k - 2, size=rng.integers(1, k - 1), replace=False)
    labels[i] = rng.choice(present, shape)
  preds = np.where(rng.random(labels.shape) < 0.6, labels, rng.integers(0, k - 1, labels.shape))  # k-2: predicted only
  labels = np.where(rng.random(labels.shape) < 0.15, IGNORE, labels)
  labels[-1] = IGNORE  # all-ignore image: smp's tn excludes ignored pixels, so even accuracy is 0/0 there
  return labels, preds  # class k-1 is in neither


def segjax_conventions(labels, preds, k, **kwargs):
  """What eval.py prints: per-image matrices under jit (semantic evaluator), image_stats, compute_conventions."""
  weights = (labels != IGNORE).astype(np.float32)
  fn = jax.jit(metrics.confusion_matrices, static_argnums=3)
  cms = np.asarray(fn(np.where(labels == IGNORE, 0, labels), preds, weights, k)).astype(np.int64)
  return conventions.compute_conventions(cms.sum(0), metrics.image_stats(cms), **kwargs), metrics.image_stats(cms)


@pytest.mark.parametrize("seed,k,zero_division", [(0, 6, 1.0), (1, 5, 0.0), (2, 8, 0.5)])
def test_smp_conventions_equal_smp(seed, k, zero_division):
  smp = import_smp()
  import torch  # pylint: disable=import-outside-toplevel
  labels, preds = label_maps(seed, k)
  class_weights = list(np.random.default_rng(seed + 100).uniform(0.2, 3.0, k))
  got, stats = segjax_conventions(labels, preds, k, class_weights=class_weights, zero_division=zero_division)
  tp, fp, fn, tn = smp.metrics.get_stats(torch.from_numpy(preds), torch.from_numpy(labels), mode="multiclass",
                                         num_classes=k, ignore_index=IGNORE)
  # The inputs are the same, count for count, before any reduction.
  for key, value in zip(("tp", "fp", "fn", "tn"), (tp, fp, fn, tn)):
    np.testing.assert_array_equal(stats[key], value.numpy(), err_msg=key)
  assert set(REDUCTIONS) <= set(got)
  for name, reduction in REDUCTIONS.items():
    for metric in METRICS:
      want = getattr(smp.metrics, metric)(tp, fp, fn, tn, reduction=reduction, zero_division=zero_division,
                                          class_weights=class_weights if reduction == "weighted" else None).item()
      # atol 1e-6: smp computes in float32, segjax in float64. NaN (smp_micro of nothing) must match NaN.
      np.testing.assert_allclose(got[name][metric], want, rtol=0, atol=1e-6, err_msg=f"{name} {metric}")


def test_smp_weighted_is_a_weighted_mean():
  """The CamVid symptom: with every class IoU above 17% the weighted reduction cannot be 2.55%."""
  import_smp()
  labels, preds = label_maps(3, 6)
  got, _ = segjax_conventions(labels, preds, 6, class_weights=[1.0] * 6)
  for metric in METRICS:  # equal weights: the weighted mean is smp_macro, not smp_macro / K
    assert got["smp_weighted"][metric] == pytest.approx(got["smp_macro"][metric], abs=1e-12)
  got, _ = segjax_conventions(labels, preds, 6, class_weights=[0, 0, 5, 0, 0, 0])
  # All the weight on class 2 (in the ground truth, so no 0/0): its own IoU, whatever the weight's scale.
  assert got["smp_weighted"]["iou_score"] == pytest.approx(got["segjax"]["iou"][2], abs=1e-12)


def test_smp_weighted_without_weights():
  """smp raises without class weights; segjax leaves smp_weighted out, and eval.py refuses it as the headline."""
  smp = import_smp()
  import torch  # pylint: disable=import-outside-toplevel
  labels, preds = label_maps(4, 5)
  got, _ = segjax_conventions(labels, preds, 5)
  assert "smp_weighted" not in got
  tp = torch.ones(2, 5, dtype=torch.long)
  with pytest.raises(ValueError, match="Class weights should be provided"):
    smp.metrics.iou_score(tp, tp, tp, tp, reduction="weighted")


def test_config_accepts_smp_weighted():
  from segjax import config as config_lib  # pylint: disable=import-outside-toplevel
  c = config_lib.default_config()
  c.metrics.convention = "smp_weighted"
  config_lib.validate(c)
