"""What eval.py does: restore a checkpoint, evaluate a split (optionally as an ensemble), write the report.

`run_eval` writes DIR/eval/<split>/ (metrics.json, per_class.csv, confusion.png, worst/best panels, images), prints
the metrics table and every toolkit's convention, and logs the numbers to the workdir's TensorBoard and
curves.png.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Sequence

import jax
import ml_collections

from segjax import experiment, viz
from segjax import state as state_lib
from segjax.data import datasets
from segjax.evaluation import conventions, inference, metrics, report, semantic
from segjax.training import curves, logs

def _check_split_not_empty(config: ml_collections.ConfigDict, split: str, spec: datasets.DatasetSpec) -> None:
  """Refuses a split (or tfds slice) without examples, which would give metrics of nothing. (datasets.data_source
  refuses empty splits of segjax's builders itself; this also covers other sources.)"""
  if len(datasets.data_source(config.dataset, split)) == 0:
    raise ValueError(f"Split {split!r} of dataset {spec.name!r} holds no examples: there is nothing to evaluate. "
                     f"Pass --split with a split that has examples ({', '.join(spec.splits)}), or a slice that "
                     "selects some (tfds slicing: 'test[:50]', 'test[10%:]').")

def run_eval(config: ml_collections.ConfigDict, workdir: str, *, split: str | None = None,
             checkpoint_step: int | None = None,
             members: Sequence[tuple[ml_collections.ConfigDict, str, int | None]] = (),
             raw_params: bool = False) -> dict[str, Any]:
  """What eval.py does: restore a checkpoint of `workdir`, evaluate `split`, write DIR/eval/<split>/.

  Args:
    config: the recipe the checkpoint was trained with (its `inference` block picks the inference mode).
    workdir: the training directory.
    split: split or tfds slice (default: the recipe's eval_split).
    checkpoint_step: step to restore (default: the latest).
    members: further ensemble members as (recipe, workdir, step or None); their averaged probabilities are
      scored together with this one.
    raw_params: evaluate the trained weights themselves, not their moving average (`config.ema`; the average is
      what a run with EMA evaluates by default); the report goes to DIR/eval/<split>_raw/. For semantic recipes.

  Raises:
    FileNotFoundError: `workdir` holds no complete checkpoint (missing, empty, or only an unfinished save),
      saying which and what to do.
    ValueError: a bad recipe, a checkpoint of another model or classes, an unknown checkpoint step, a split
      without examples, or ensemble members with another class list.
  """
  if raw_params and config.task != "semantic":
    raise ValueError(f"--raw_params is for semantic recipes; this one is config.task={config.task!r}, whose "
                     "evaluation uses the moving average when config.ema.decay > 0. Drop --raw_params.")
  if config.task == "instance":  # COCO AP of detections (segjax.apps.eval_instance)
    if members:
      raise ValueError("--member: ensembles average semantic probabilities; instance recipes evaluate one "
                       "checkpoint. Drop --member.")
    from segjax.apps import eval_instance  # pylint: disable=import-outside-toplevel
    return eval_instance.run_eval(config, workdir, split=split, checkpoint_step=checkpoint_step)
  if config.task == "panoptic":  # Panoptic Quality of the fused predictions (segjax.apps.eval_panoptic)
    if members:
      raise ValueError("--member: ensembles average semantic probabilities; panoptic recipes evaluate one "
                       "checkpoint. Drop --member.")
    from segjax.apps import eval_panoptic  # pylint: disable=import-outside-toplevel
    return eval_panoptic.run_eval(config, workdir, split=split, checkpoint_step=checkpoint_step)
  params = inference.InferenceParams.from_config(config)  # a bad inference block fails before any restore
  if config.metrics.convention == "smp_weighted" and config.loss.class_weights is None:
    raise ValueError("config.metrics.convention='smp_weighted' needs class weights (smp's weighted reduction), "
                     "taken from config.loss.class_weights, which is unset: set them or choose another convention.")
  if raw_params and not state_lib.ema_decay(config)[0]:
    raise ValueError("--raw_params evaluates the raw weights of a run trained with a moving average, but the "
                     "recipe has config.ema.decay=0: its evaluation already uses the raw weights. Drop --raw_params.")
  exp, state, step = experiment.restore(config, workdir, checkpoint_step)
  if raw_params:
    state = state.replace(ema_params=None)  # TrainState.eval_params then gives the trained weights
  split = split or config.eval_split
  _check_split_not_empty(config, split, exp.spec)
  extra = []
  for member_config, member_workdir, member_step in members:
    inference.check_same_classes(exp.spec, member_workdir, datasets.get_spec(member_config.dataset))
    extra.append(experiment.load_member(member_config, member_workdir, member_step, mesh=exp.mesh))
  result_eval = semantic.evaluate(exp, state, split, members=extra, params=params,
                         num_visualizations=config.num_visualizations)
  names = exp.spec.class_names
  result = metrics.compute_metrics(result_eval.cm, names)
  class_weights = config.loss.class_weights  # smp's "weighted" reduction needs weights; the training ones
  result["conventions"] = conventions.compute_conventions(result_eval.cm, result_eval.stats, names,
                                                      class_weights=class_weights)
  result.update(split=split, checkpoint_step=step, dataset=exp.spec.name, num_images=int(len(result_eval.scores)),
                inference=dataclasses.asdict(params),
                ensemble=[workdir, *[m[1] for m in members]] if members else None, raw_params=raw_params)
  if jax.process_index() == 0:
    name = f"{split}_raw" if raw_params else split  # the raw weights' report beside the average's
    out_dir = pathlib.Path(workdir) / "eval" / name
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
    _log_to_workdir(workdir, name, step, result, result_eval.samples, exp.spec.palette)
  return result

def _log_to_workdir(workdir, split, step, result, samples, palette) -> None:
  """eval.py's metrics and overlays in the workdir's TensorBoard logs (`eval/<split>/...` at the checkpoint's
  step), and DIR/curves.png redrawn with them."""
  board = logs.TensorBoard(workdir, enabled=True)
  try:
    board.scalars({"step": step, **{f"eval/{split}/{k}": result[k] for k in curves.EVAL_KEYS}})
    if samples:
      board.images(f"eval/{split}/overlay", viz.overlay_images(samples, palette), step)
  finally:
    board.close()
  curves.plot_curves(workdir)
