"""Semantic evaluation: a split through the recipe's inference mode (and optional ensemble), confusion matrices
per image, metrics under every convention (the reports are written by segjax.apps.eval).

Two paths, chosen by `config.inference.mode` and `config.dataset.eval_size`:
- "whole" with eval_size (h, w) or None: global batches padded to one size (`pipeline.eval_batches`), sharded over
  the mesh, scored by a jitted step that returns one confusion matrix per image (summed across devices inside jit)
  and the labels.
- "slide" / "overlap_tile", and "whole" with eval_size "per_image": one image at a time at its own size
  (`inference.Segmenter.predict_image`, the prediction predict.py writes for that image; tiled modes stream tile by
  tile); processes take every P-th image and their per-image matrices are gathered at the end. Splits of mixed
  sizes need no size named, and an image's prediction does not depend on the other images of the split.
Both end in the same place: per-image [K, K] counts, their sum, and the metrics of docs/metrics.md.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Sequence

import jax
import numpy as np
import tqdm

from segjax import forward as forward_lib
from segjax import models, sharding, viz
from segjax.data import datasets, pipeline
from segjax.evaluation import inference, metrics, report
from segjax.evaluation import loop as loop_lib

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Evaluation:
  """What `evaluate` measured over a split.

  Attributes:
    cm: [K, K] int64 confusion matrix of the whole split (rows ground truth, columns prediction).
    stats: per-image int64 `tp, fp, fn, tn`, each [N, K], in split order (`metrics.image_stats`).
    scores: [N] per-image mIoU (`metrics.image_scores`), NaN for an image without valid pixels.
    samples: up to `num_visualizations` examples of this process (image, label, pred, weight, index).
    ranking: the worst and best scored examples of this process (`report.ImageRanking`).
  """
  cm: np.ndarray
  stats: dict[str, np.ndarray]
  scores: np.ndarray
  samples: list[dict[str, Any]]
  ranking: report.ImageRanking


_STATS = ("tp", "fp", "fn", "tn")


class _Collector:
  """Per-image matrices in; the running total, per-image stats and scores, samples and the ranking out.

  Only the [4, K] stats row of an image is kept, not its [K, K] matrix (ADE20K: 2000 images x 150^2 classes).
  """

  def __init__(self, num_classes: int, num_examples: int, num_visualizations: int, num_ranked: int):
    self.k = num_classes
    self.total = np.zeros((num_classes, num_classes), np.int64)
    self.rows: dict[int, np.ndarray] = {}
    self.scores: dict[int, float] = {}
    self.num_examples = num_examples
    self.num_visualizations = num_visualizations
    self.samples: list[dict[str, Any]] = []
    self.ranking = report.ImageRanking(num_ranked)

  def add(self, index: int, cm: np.ndarray, example: dict[str, np.ndarray] | None = None) -> None:
    """Counts image `index`'s matrix; `example` (image, label, weight, pred) when this process holds it."""
    cm = np.asarray(cm, np.int64)
    self.total += cm
    stats = metrics.image_stats(cm[None])
    score = float(metrics.image_scores(cm[None])[0])
    self.add_row(index, np.stack([stats[key][0] for key in _STATS]), score)
    if example is None:
      return
    sample = {**example, "index": int(index), "score": score}
    if len(self.samples) < self.num_visualizations:
      self.samples.append(sample)
    if self.ranking.wants(score, index):
      self.ranking.add(score, sample)

  def add_row(self, index: int, row: np.ndarray, score: float) -> None:
    """Records the stats row of an image counted elsewhere (another process's share)."""
    self.rows[int(index)] = np.asarray(row, np.int64)
    self.scores[int(index)] = float(score)

  def finish(self) -> Evaluation:
    missing = sorted(set(range(self.num_examples)) - set(self.rows))
    if missing:
      raise RuntimeError(f"evaluation lost {len(missing)} images (first: {missing[:5]}); this is a bug in segjax")
    rows = np.asarray([self.rows[i] for i in range(self.num_examples)], np.int64).reshape(-1, 4, self.k)
    return Evaluation(cm=self.total.copy(), stats={key: rows[:, i] for i, key in enumerate(_STATS)},
                      scores=np.asarray([self.scores[i] for i in range(self.num_examples)], np.float64),
                      samples=self.samples, ranking=self.ranking)


PER_IMAGE = "per_image"  # config.dataset.eval_size: evaluate each image at its own size
SCALARS = ("pixel_accuracy", "mean_accuracy", "mean_iou", "fw_iou", "mean_dice")  # logged as eval/<name>


def _host_confusion(label: np.ndarray, pred: np.ndarray, weight: np.ndarray, k: int) -> np.ndarray:
  """`metrics.confusion_matrix` on host for one image of any size (no recompilation per size)."""
  valid = (weight > 0) & (label >= 0) & (label < k) & (pred >= 0) & (pred < k)
  index = label[valid].astype(np.int64) * k + pred[valid]
  return np.bincount(index, minlength=k * k).reshape(k, k)


class Evaluator:
  """Evaluates states of one Experiment (plus fixed extra ensemble `members`) over splits.

  Built once per training run: its Segmenter and jitted step are kept and only the weights change between calls,
  so evaluating every N steps compiles once per eval shape.

  Args:
    exp: the recipe's experiment (dataset, model, mesh).
    members: further networks averaged with the evaluated state (`experiment.load_member`), same classes.
    params: inference mode and test-time augmentation (default: the recipe's `config.inference`).
  """

  def __init__(self, exp, members: Sequence[inference.Member] = (), params: inference.InferenceParams | None = None):
    self.exp = exp
    self.params = params or inference.InferenceParams.from_config(exp.config, exp.model)
    self.extra = tuple(members)
    self.segmenter: inference.Segmenter | None = None
    self._whole = None

  def _prepare(self, state) -> inference.Segmenter:
    exp = self.exp
    variables = forward_lib.variables(state.eval_params, state.batch_stats)
    if self.segmenter is not None:
      self.segmenter.set_variables([variables, *(m.variables for m in self.extra)])
      return self.segmenter
    first = inference.Member(model=exp.model, variables=variables, mean=tuple(exp.mean), std=tuple(exp.std),
                             normalization=exp.normalization)
    self.segmenter = inference.Segmenter([first, *self.extra], exp.spec.num_classes, self.params, mesh=exp.mesh,
                                         conv_backend=exp.conv_backend)
    segmenter, k = self.segmenter, exp.spec.num_classes

    # Variables are arguments, not closed-over constants, so the compiled program does not embed the weights.
    def semantic_eval_step(variables, batch):
      preds = segmenter.batch_scores(batch["image"], variables).argmax(-1).astype(np.int32)
      return metrics.confusion_matrices(batch["label"], preds, batch["weight"], k), preds

    self._whole = jax.jit(semantic_eval_step, out_shardings=(sharding.replicated(exp.mesh),
                                                             sharding.batch_sharding(exp.mesh, 3)))
    return self.segmenter

  def run(self, state, split: str, *, num_visualizations: int = 0, progress: bool = True) -> Evaluation:
    """Runs `state` (plus the extra members) over every example of `split` (a split or tfds slice)."""
    config = self.exp.config
    segmenter = self._prepare(state)
    source = datasets.data_source(config.dataset, split)
    collector = _Collector(self.exp.spec.num_classes, len(source), num_visualizations, config.metrics.num_ranked)
    if self.params.mode == "whole" and config.dataset.eval_size != PER_IMAGE:
      self._run_whole(segmenter, source, split, collector, progress)
    else:
      self._run_per_image(segmenter, source, split, collector, progress)
    return collector.finish()

  def evaluate(self, state, split: str, *, num_visualizations: int = 0, progress: bool = True):
    """`run`, summarised for the training loop (a segjax.evaluation.loop.EvalResult)."""
    evaluation = self.run(state, split, num_visualizations=num_visualizations, progress=progress)
    result = metrics.compute_metrics(evaluation.cm, self.exp.spec.class_names)
    overlays = viz.overlay_images(evaluation.samples, self.exp.spec.palette) if evaluation.samples else None
    return loop_lib.EvalResult(scalars={k: result[k] for k in SCALARS},
                               headline=f"mIoU {result['mean_iou']:.4f}, pixel accuracy {result['pixel_accuracy']:.4f}",
                               overlays=overlays, details=evaluation)

  def _run_whole(self, segmenter, source, split, collector, progress) -> None:
    exp, batch_size = self.exp, self.exp.config.eval_batch_size
    sharding.check_batch_divisible(batch_size, exp.mesh, "eval_batch_size")
    # Padding to the recipe's divisor as training does; the segmenter pads further for members that need it.
    size = pipeline.eval_size(source, exp.config.dataset.eval_size, models.size_divisor(exp.model))
    rows = pipeline.GlobalBatches.rows(exp.mesh, batch_size)

    def collect(b, batch, outputs):
      cms, preds = outputs
      cms = np.asarray(cms)  # replicated: every process sees the whole batch's matrices
      local_preds = pipeline.local_rows(preds, rows)
      local = {int(batch["index"][i]): i for i in range(len(rows)) if batch["index"][i] >= 0}
      for j in range(batch_size):
        index = b * batch_size + j
        if index >= len(source):
          break
        i = local.get(index)
        example = None if i is None else {"image": batch["image"][i], "label": batch["label"][i],
                                          "weight": batch["weight"][i], "pred": local_preds[i]}
        collector.add(index, cms[j], example)

    variables = segmenter.variables
    loop_lib.run_batches(exp, source, example=pipeline.semantic_eval_example(exp.spec, size),
                         padding=pipeline.semantic_padding(exp.spec, size), batch_size=batch_size,
                         step=lambda batch: self._whole(variables, batch), collect=collect,
                         specs=exp.task.batch_specs(exp), desc=f"eval {split}", progress=progress)

  def _run_per_image(self, segmenter, source, split, collector, progress) -> None:
    """Tiled modes and eval_size "per_image": this process's images (every P-th), each at its own size; matrices
    gathered across processes."""
    k, spec = self.exp.spec.num_classes, self.exp.spec
    mine = range(jax.process_index(), len(source), jax.process_count())
    for index in tqdm.tqdm(mine, desc=f"eval {split} ({self.params.mode})",
                           disable=not progress or jax.process_index() != 0, leave=False):
      ex = pipeline.to_example(source[index], spec.ignore_label, k, spec.reduce_zero_label)
      pred = np.asarray(segmenter.predict_image(ex.image))
      collector.add(index, _host_confusion(ex.label, pred, ex.weight, k),
                    {"image": ex.image, "label": ex.label, "weight": ex.weight, "pred": pred})
    if jax.process_count() > 1:
      _gather_rows(collector, mine, len(source), k)


def _gather_rows(collector, mine, num_examples: int, k: int) -> None:
  """Every process needs the whole split's numbers: gathers each one's rows, scores and total."""
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  count, share = jax.process_count(), -(-num_examples // jax.process_count())
  rows = np.zeros((share, 4, k), np.int64)
  scores = np.full((share,), np.nan)
  for n, index in enumerate(mine):
    rows[n], scores[n] = collector.rows[index], collector.scores[index]
  all_rows, all_scores, totals = (np.asarray(x) for x in multihost_utils.process_allgather(
      (rows, scores, collector.total)))
  collector.total = totals.sum(0)
  for p in range(count):
    if p != jax.process_index():
      for n, index in enumerate(range(p, num_examples, count)):
        collector.add_row(index, all_rows[p, n], all_scores[p, n])


def evaluate(exp, state, split: str, *, members: Sequence[inference.Member] = (),
             params: inference.InferenceParams | None = None, num_visualizations: int = 0,
             progress: bool = True) -> Evaluation:
  """`Evaluator(exp, members, params).run(state, split, ...)`: one evaluation (eval.py's)."""
  return Evaluator(exp, members, params).run(state, split, num_visualizations=num_visualizations,
                                             progress=progress)
