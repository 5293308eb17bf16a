"""Evaluation: a split through the recipe's inference mode (and optional ensemble), confusion matrices per image,
metrics under every convention, reports.

Two paths, chosen by `config.inference.mode`:
- "whole": global batches padded to one size (`pipeline.eval_batches`), sharded over the mesh, scored by a
  jitted step that returns one confusion matrix per image (summed across devices inside jit) and the labels.
- "slide" / "overlap_tile": one image at a time at its own size, streamed tile by tile (`inference.Segmenter`);
  processes take every P-th image and their per-image matrices are gathered at the end.
Both end in the same place: per-image [K, K] counts, their sum, and the metrics of docs/metrics.md.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np
import tqdm

from segjax import conventions, inference, metrics, models, report, sharding
from segjax.data import datasets, pipeline
from segjax.train import checkpoint as checkpoint_lib
from segjax.train import setup as setup_lib

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


def _whole_step(segmenter: inference.Segmenter, num_classes: int, mesh):
  """The jitted step of the whole-image path: (the members' variables, global batch) -> (per-image matrices
  [B, K, K] replicated, labels [B, H, W] sharded like the batch).

  Variables are arguments, not closed-over constants, so the compiled program does not embed the weights.
  """
  def step(variables, batch):
    preds = segmenter.batch_scores(batch["image"], variables).argmax(-1).astype(np.int32)
    return metrics.confusion_matrices(batch["label"], preds, batch["weight"], num_classes), preds

  return jax.jit(step, out_shardings=(sharding.replicated(mesh), sharding.batch_sharding(mesh, 3)))


def _evaluate_whole(exp, members, params, source, split, collector, progress) -> None:
  config = exp.config
  sharding.check_batch_divisible(config.eval_batch_size, exp.mesh, "eval_batch_size")
  # Padding to the recipe's divisor as training does; the segmenter pads further for members that need it.
  size = pipeline.eval_size(source, config.dataset.eval_size, models.size_divisor(exp.model))
  segmenter = inference.Segmenter(members, exp.spec.num_classes, params, mesh=exp.mesh,
                                  conv_backend=exp.conv_backend)
  step = _whole_step(segmenter, exp.spec.num_classes, exp.mesh)
  variables = segmenter.variables
  rows = sharding.process_rows(sharding.batch_sharding(exp.mesh), config.eval_batch_size, (*size, 1))
  num_batches = pipeline.num_eval_batches(len(source), config.eval_batch_size)
  batches = pipeline.eval_batches(source, spec=exp.spec, batch_size=config.eval_batch_size, size=size, rows=rows)

  def collect(b, batch, cms, preds):
    cms = np.asarray(cms)  # replicated: every process sees the whole batch's matrices
    local_preds = pipeline.local_rows(preds, rows)
    local = {int(batch["index"][i]): i for i in range(len(rows)) if batch["index"][i] >= 0}
    for j in range(config.eval_batch_size):
      index = b * config.eval_batch_size + j
      if index >= len(source):
        break
      i = local.get(index)
      example = None if i is None else {"image": batch["image"][i], "label": batch["label"][i],
                                        "weight": batch["weight"][i], "pred": local_preds[i]}
      collector.add(index, cms[j], example)

  # Results are fetched one batch late, so the host reads batch b while the devices run batch b + 1.
  pending = None
  for b, batch in enumerate(tqdm.tqdm(batches, total=num_batches, desc=f"eval {split}",
                                      disable=not progress or jax.process_index() != 0, leave=False)):
    outputs = step(variables, pipeline.to_global(batch, exp.mesh, config.eval_batch_size))
    if pending is not None:
      collect(*pending)
    pending = (b, batch, *outputs)
  if pending is not None:
    collect(*pending)


def _host_confusion(label: np.ndarray, pred: np.ndarray, weight: np.ndarray, k: int) -> np.ndarray:
  """`metrics.confusion_matrix` on host for one image of any size (no recompilation per size)."""
  valid = (weight > 0) & (label >= 0) & (label < k) & (pred >= 0) & (pred < k)
  index = label[valid].astype(np.int64) * k + pred[valid]
  return np.bincount(index, minlength=k * k).reshape(k, k)


def _evaluate_per_image(exp, members, params, source, split, collector, progress) -> None:
  """Tiled modes: this process's images (every P-th), each at its own size; matrices gathered across processes."""
  segmenter = inference.Segmenter(members, exp.spec.num_classes, params, mesh=exp.mesh,
                                  conv_backend=exp.conv_backend)
  k, spec = exp.spec.num_classes, exp.spec
  mine = range(jax.process_index(), len(source), jax.process_count())
  for index in tqdm.tqdm(mine, desc=f"eval {split} ({params.mode})",
                         disable=not progress or jax.process_index() != 0, leave=False):
    ex = pipeline.to_example(source[index], spec.ignore_label, k, spec.reduce_zero_label)
    pred = np.asarray(segmenter.predict_image(ex.image))
    collector.add(index, _host_confusion(ex.label, pred, ex.weight, k), {"image": ex.image, "label": ex.label, "weight": ex.weight, "pred": pred})
  if jax.process_count() > 1:
    # Every process needs the whole split's numbers: gather each one's rows, scores and total.
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    count, share = jax.process_count(), -(-len(source) // jax.process_count())
    rows = np.zeros((share, 4, k), np.int64)
    scores = np.full((share,), np.nan)
    for n, index in enumerate(mine):
      rows[n], scores[n] = collector.rows[index], collector.scores[index]
    all_rows, all_scores, totals = (np.asarray(x) for x in multihost_utils.process_allgather(
        (rows, scores, collector.total)))
    collector.total = totals.sum(0)
    for p in range(count):
      if p != jax.process_index():
        for n, index in enumerate(range(p, len(source), count)):
          collector.add_row(index, all_rows[p, n], all_scores[p, n])


def evaluate(exp: setup_lib.Experiment, state, split: str, *, members: Sequence[inference.Member] = (),
             params: inference.InferenceParams | None = None, num_visualizations: int = 0,
             progress: bool = True) -> Evaluation:
  """Runs `state` (plus any extra ensemble `members`) over every example of `split`.

  Args:
    exp: the recipe's experiment (dataset, model, mesh).
    state: the TrainState to evaluate (the first ensemble member).
    split: a split or tfds slice of the recipe's dataset.
    members: further networks averaged with `state` (`inference.load_member`), same classes.
    params: inference mode and test-time augmentation (default: the recipe's `config.inference`).
    num_visualizations: examples of this process kept in `Evaluation.samples`.
    progress: show a progress bar (process 0).
  """
  config = exp.config
  params = params or inference.InferenceParams.from_config(config)
  members = [inference.member_from_state(exp, state), *members]
  source = datasets.data_source(config.dataset, split)
  collector = _Collector(exp.spec.num_classes, len(source), num_visualizations, config.metrics.num_ranked)
  run = _evaluate_whole if params.mode == "whole" else _evaluate_per_image
  run(exp, members, params, source, split, collector, progress)
  return collector.finish()


def _check_split_not_empty(config: ml_collections.ConfigDict, split: str, spec: datasets.DatasetSpec) -> None:
  """Refuses a split (or tfds slice) without examples, which would give metrics of nothing. (datasets.data_source
  refuses empty splits of segjax's builders itself; this also covers other sources.)"""
  if len(datasets.data_source(config.dataset, split)) == 0:
    raise ValueError(f"Split {split!r} of dataset {spec.name!r} holds no examples: there is nothing to evaluate. "
                     f"Pass --split with a split that has examples ({', '.join(spec.splits)}), or a slice that "
                     "selects some (tfds slicing: 'test[:50]', 'test[10%:]').")


def run_eval(config: ml_collections.ConfigDict, workdir: str, *, split: str | None = None,
             checkpoint_step: int | None = None,
             members: Sequence[tuple[ml_collections.ConfigDict, str, int | None]] = ()) -> dict[str, Any]:
  """What eval.py does: restore a checkpoint of `workdir`, evaluate `split`, write DIR/eval/<split>/.

  Args:
    config: the recipe the checkpoint was trained with (its `inference` block picks the inference mode).
    workdir: the training directory.
    split: split or tfds slice (default: the recipe's eval_split).
    checkpoint_step: step to restore (default: the latest).
    members: further ensemble members as (recipe, workdir, step or None); their averaged probabilities are
      scored together with this one.

  Raises:
    FileNotFoundError: `workdir` holds no complete checkpoint (missing, empty, or only an unfinished save),
      saying which and what to do.
    ValueError: a bad recipe, a checkpoint of another model or classes, an unknown checkpoint step, a split
      without examples, or ensemble members with another class list.
  """
  params = inference.InferenceParams.from_config(config)  # a bad inference block fails before any restore
  if config.metrics.convention == "smp_weighted" and config.loss.class_weights is None:
    raise ValueError("config.metrics.convention='smp_weighted' needs class weights (smp's weighted reduction), "
                     "taken from config.loss.class_weights, which is unset: set them or choose another convention.")
  exp, state, step = checkpoint_lib.restore_checkpoint(config, workdir, checkpoint_step)
  split = split or config.eval_split
  _check_split_not_empty(config, split, exp.spec)
  extra = []
  for member_config, member_workdir, member_step in members:
    inference.check_same_classes(exp.spec, member_workdir, datasets.get_spec(member_config.dataset))
    extra.append(inference.load_member(member_config, member_workdir, member_step, mesh=exp.mesh))
  result_eval = evaluate(exp, state, split, members=extra, params=params,
                         num_visualizations=config.num_visualizations)
  names = exp.spec.class_names
  result = metrics.compute_metrics(result_eval.cm, names)
  class_weights = config.loss.class_weights  # smp's "weighted" reduction needs weights; the training ones
  result["conventions"] = conventions.compute_conventions(result_eval.cm, result_eval.stats, names,
                                                      class_weights=class_weights)
  result.update(split=split, checkpoint_step=step, dataset=exp.spec.name, num_images=int(len(result_eval.scores)),
                inference=dataclasses.asdict(params),
                ensemble=[workdir, *[m[1] for m in members]] if members else None)
  if jax.process_index() == 0:
    out_dir = pathlib.Path(workdir) / "eval" / split
    written = report.write_report(out_dir, result, result_eval.cm, exp.spec, samples=result_eval.samples,
                                  ranking=result_eval.ranking)
    print(f"\n{exp.spec.name} / {split}, checkpoint step {step}, inference {params.mode}\n"
          f"{metrics.format_table(result)}")
    convention = config.metrics.convention
    print(f"\nThe same predictions under each toolkit's convention (docs/metrics.md), percent:\n"
          f"{conventions.format_conventions(result['conventions'], convention)}")
    images = written.pop("images", [])
    print(f"Wrote {', '.join(str(p) for p in written.values())}"
          + (f" and {len(images)} images under {out_dir / 'images'}" if images else ""))
    _log_to_workdir(workdir, split, step, result, result_eval.samples, exp.spec.palette)
  return result


def _log_to_workdir(workdir, split, step, result, samples, palette) -> None:
  """eval.py's metrics and overlays in the workdir's TensorBoard logs (`eval/<split>/...` at the checkpoint's
  step), and DIR/curves.png redrawn with them."""
  from segjax import curves  # pylint: disable=import-outside-toplevel  (segjax.curves imports segjax.train)
  from segjax.train import logs  # pylint: disable=import-outside-toplevel
  board = logs.TensorBoard(workdir, enabled=True)
  try:
    board.scalars({"step": step, **{f"eval/{split}/{k}": result[k] for k in curves.EVAL_KEYS}})
    if samples:
      board.images(f"eval/{split}/overlay", logs.overlay_images(samples, palette), step)
  finally:
    board.close()
  curves.plot_curves(workdir)
