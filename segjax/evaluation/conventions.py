"""The same confusion counts under each toolkit's metric convention: MMSegmentation's IoUMetric, torchvision's
reference script, torchmetrics, and segmentation_models_pytorch's five reductions.

Formulas, absent-class rules and when each equals segjax's own numbers: docs/metrics.md. Every function here is
checked against a transcription of the other toolkit's code (or the toolkit itself) in
tests/evaluation/test_conventions.py; the smp ones against segmentation_models_pytorch itself in
tests/evaluation/test_conventions_smp.py.
"""

from collections.abc import Sequence
import math
from typing import Any
import warnings

import numpy as np

from segjax.evaluation.metrics import compute_metrics, format_percent, image_stats, nanmean

CONVENTIONS = ("segjax", "mmseg", "torchvision", "torchmetrics", "smp_micro", "smp_macro", "smp_weighted",
               "smp_micro_imagewise", "smp_macro_imagewise")
_SMP_REDUCTIONS = {"smp_micro": "micro", "smp_macro": "macro", "smp_weighted": "weighted",
                   "smp_micro_imagewise": "micro-imagewise", "smp_macro_imagewise": "macro-imagewise"}


def _divide(num, den) -> np.ndarray:
  """IEEE division as torch does it (0/0 = NaN, x/0 = inf), without warnings."""
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.true_divide(np.asarray(num, np.float64), np.asarray(den, np.float64))


def _safe_divide(num, den, zero_division: float) -> np.ndarray:
  """torchmetrics' `_safe_divide`: `zero_division` where den == 0."""
  num, den = np.broadcast_arrays(np.asarray(num, np.float64), np.asarray(den, np.float64))
  out = np.full(num.shape, float(zero_division))
  np.divide(num, den, out=out, where=den != 0)
  return out


def _floats(x: np.ndarray) -> list[float]:
  return [float(v) for v in np.ravel(x)]


def _mmseg(cm: np.ndarray, nan_to_num: float | None) -> dict[str, Any]:
  """MMSegmentation 1.x `IoUMetric.total_area_to_metrics`, metrics mIoU, mDice, mFscore, beta 1."""
  inter = np.diag(cm).astype(np.float64)
  label = cm.sum(axis=1).astype(np.float64)
  pred = cm.sum(axis=0).astype(np.float64)
  precision = _divide(inter, pred)
  recall = _divide(inter, label)
  per_class = dict(
      IoU=_divide(inter, pred + label - inter), Acc=recall, Dice=_divide(2 * inter, pred + label),
      # f_score(p, r) = (1 + b^2) p r / (b^2 p + r): NaN whenever p or r is, and 0/0 = NaN when the class was
      # both present and predicted but never hit, so such a class drops out of mFscore (it counts 0 in mDice).
      Fscore=_divide(2 * precision * recall, precision + recall), Precision=precision, Recall=recall)
  all_acc = _divide(inter.sum(), label.sum())
  if nan_to_num is not None:
    all_acc = np.nan_to_num(all_acc, nan=nan_to_num)
    per_class = {k: np.nan_to_num(v, nan=nan_to_num) for k, v in per_class.items()}
  out = {"aAcc": float(all_acc)}
  out.update({"m" + k: nanmean(v) for k, v in per_class.items()})
  out.update({k: _floats(v) for k, v in per_class.items()})
  return out


def _torchvision(cm: np.ndarray) -> dict[str, Any]:
  """torchvision references/segmentation/utils.py `ConfusionMatrix.compute` and its printed mean IoU."""
  diag = np.diag(cm).astype(np.float64)
  acc = _divide(diag, cm.sum(axis=1))
  iu = _divide(diag, cm.sum(axis=1) + cm.sum(axis=0) - diag)
  # `iu.mean()`: a plain mean, so one class absent from ground truth and prediction makes it NaN.
  return dict(global_correct=float(_divide(diag.sum(), cm.sum())), mean_iou=float(iu.mean()),
              acc=_floats(acc), iu=_floats(iu))


def _torchmetrics(cm: np.ndarray) -> dict[str, Any]:
  """torchmetrics 1.x Multiclass{Accuracy, Precision, Recall, F1Score, JaccardIndex}, defaults (zero_division 0)."""
  tp = np.diag(cm).astype(np.float64)
  fp = cm.sum(axis=0) - tp
  fn = cm.sum(axis=1) - tp
  # Macro averages weigh out classes with tp + fp + fn = 0 (absent from ground truth and prediction).
  weights = (tp + fp + fn > 0).astype(np.float64)

  def macro(score):  # `_adjust_weights_safe_divide`: 0 when no class has weight.
    return float(_safe_divide(weights * score, weights.sum(), 0.0).sum())

  iou = _safe_divide(tp, tp + fp + fn, 0.0)
  recall = _safe_divide(tp, tp + fn, 0.0)
  return dict(
      pixel_accuracy=float(_safe_divide(tp.sum(), (tp + fn).sum(), 0.0)),
      mean_accuracy=macro(recall),
      # `_jaccard_index_reduce` divides by the weight sum without the safe division: NaN when it is 0.
      mean_iou=float(np.sum(_divide(weights * iou, weights.sum()))),
      mean_precision=macro(_safe_divide(tp, tp + fp, 0.0)),
      mean_recall=macro(recall),
      mean_f1=macro(_safe_divide(2 * tp, 2 * tp + fn + fp, 0.0)),
      iou=_floats(iou))


def _smp_zero_division(x: np.ndarray, zero_division: float | str) -> np.ndarray:
  """smp's `_handle_zero_division`: NaN -> zero_division ("warn": 0 and a warning)."""
  nans = np.isnan(x)
  if zero_division == "warn":
    if nans.any():
      warnings.warn("Zero division in metric calculation!")
    zero_division = 0.0
  return np.where(nans, float(zero_division), x)


def _smp(tp, fp, fn, tn, reduction: str, class_weights, zero_division) -> dict[str, float]:
  """segmentation_models_pytorch `metrics.functional._compute_metric` for five metrics.

  tp, fp, fn, tn: [N, K] per-image stats (N = 1 is fine for the dataset-level reductions, which sum over images
  first).
  """
  metric_fns = dict(
      iou_score=lambda tp, fp, fn, tn: _divide(tp, tp + fp + fn),
      f1_score=lambda tp, fp, fn, tn: _divide(2 * tp, 2 * tp + fn + fp),
      accuracy=lambda tp, fp, fn, tn: _divide(tp + tn, tp + fp + fn + tn),
      precision=lambda tp, fp, fn, tn: _divide(tp, tp + fp),
      recall=lambda tp, fp, fn, tn: _divide(tp, tp + fn))
  weights = np.asarray(1.0 if class_weights is None else class_weights, np.float64)
  # smp normalises the weights to sum 1 first; "weighted" then *sums* `score * w` (a weighted mean), whereas
  # "macro" and "macro-imagewise" take `.mean()` (with the scalar weight 1 they are plain means).
  weights = weights / weights.sum()
  out = {}
  for name, fn_ in metric_fns.items():
    if reduction == "micro":
      # No zero_division here in smp: an empty matrix gives NaN.
      score = fn_(tp.sum(), fp.sum(), fn.sum(), tn.sum())
    elif reduction == "macro":
      score = _smp_zero_division(fn_(tp.sum(0), fp.sum(0), fn.sum(0), tn.sum(0)), zero_division)
      score = (score * weights).mean()
    elif reduction == "weighted":
      score = _smp_zero_division(fn_(tp.sum(0), fp.sum(0), fn.sum(0), tn.sum(0)), zero_division)
      # `.sum()`, not `.mean()`: a `.mean()` here scaled the result by 1/K (2.55% on CamVid, every class >17%).
      score = (score * weights).sum()
    elif reduction == "micro-imagewise":
      score = _smp_zero_division(fn_(tp.sum(1), fp.sum(1), fn.sum(1), tn.sum(1)), zero_division)
      score = score.mean() if score.size else math.nan
    elif reduction == "macro-imagewise":
      score = _smp_zero_division(fn_(tp, fp, fn, tn), zero_division)
      score = (score.mean(0) * weights).mean() if len(score) else math.nan
    else:
      raise ValueError(f"unknown smp reduction {reduction!r}")
    out[name] = float(score)
  return out


def compute_conventions(
    cm: np.ndarray,
    stats: dict[str, np.ndarray] | None = None,
    class_names: Sequence[str] | None = None,
    *,
    zero_division: float | str = 1.0,
    class_weights: Sequence[float] | None = None,
    nan_to_num: float | None = None,
) -> dict[str, dict[str, Any]]:
  """The numbers other toolkits would report for the same predictions.

  Every convention is documented, with its absent-class rule, in
  docs/metrics.md. Values are fractions (MMSegmentation prints x100 rounded to
  2 decimals).

  Args:
    cm: [K, K] integer counts of the whole evaluation set.
    stats: per-image stats (`image_stats` of the per-image matrices whose sum
      is `cm`); without it the image-wise smp conventions are left out.
    class_names: K names, for the per-class lists; defaults to the indices.
    zero_division: smp's value for 0/0 (its default 1.0; "warn" means 0).
    class_weights: K weights for "smp_weighted"; without them it is left out.
    nan_to_num: MMSegmentation's `nan_to_num` (None: NaN-means).

  Returns:
    {convention: {metric: float or per-class list}} for the names in
    `CONVENTIONS` that could be computed; per-class lists come with `classes`.
  """
  cm = np.asarray(cm).astype(np.int64)
  segjax = compute_metrics(cm, class_names)
  k = cm.shape[0]
  classes = [c["name"] for c in segjax["per_class"]]
  out = {"segjax": {key: value for key, value in segjax.items() if key != "per_class"}}
  out["segjax"].update({key: [c[key] for c in segjax["per_class"]] for key in ("iou", "accuracy", "precision", "f1")})
  out["mmseg"] = _mmseg(cm, nan_to_num)
  out["torchvision"] = _torchvision(cm)
  out["torchmetrics"] = _torchmetrics(cm)
  for entry in ("segjax", "mmseg", "torchvision", "torchmetrics"):
    out[entry]["classes"] = classes

  if class_weights is not None and len(class_weights) != k:
    raise ValueError(f"class_weights has {len(class_weights)} entries for {k} classes: give one weight per class.")
  whole = image_stats(cm[None])
  for name, reduction in _SMP_REDUCTIONS.items():
    if reduction == "weighted" and class_weights is None:
      continue
    per_image = reduction.endswith("imagewise")
    if per_image and stats is None:
      continue
    s = stats if per_image else whole
    out[name] = _smp(s["tp"], s["fp"], s["fn"], s["tn"], reduction,
                     class_weights if reduction == "weighted" else None, zero_division)
  if stats is not None:
    _check_stats(stats, whole)
  return out


def _check_stats(stats: dict[str, np.ndarray], whole: dict[str, np.ndarray]) -> None:
  for key in ("tp", "fp", "fn", "tn"):
    got = np.asarray(stats[key]).sum(axis=0)
    if got.shape != whole[key][0].shape or not np.array_equal(got, whole[key][0]):
      raise ValueError(f"stats[{key!r}] summed over images ({got.tolist()}) does not match the confusion matrix "
                       f"({whole[key][0].tolist()}): pass image_stats() of the per-image matrices whose sum is cm.")


def format_conventions(conventions: dict[str, dict[str, Any]], headline: str | None = None) -> str:
  """One line per convention: its summary numbers in percent, 2 decimals, "-" for NaN.

  Args:
    conventions: the output of `compute_conventions`.
    headline: a convention to list first, marked with "*".

  Returns:
    Multi-line text, no trailing newline.
  """
  names = sorted(conventions, key=lambda n: (n != headline, CONVENTIONS.index(n) if n in CONVENTIONS else 99))
  width = max(len(n) for n in names) + 2
  lines = []
  for name in names:
    values = "  ".join(f"{key} {format_percent(value)}" for key, value in conventions[name].items()
                       if isinstance(value, float))
    lines.append(f"{('* ' if name == headline else '  ') + name:<{width}}  {values}")
  return "\n".join(lines)
