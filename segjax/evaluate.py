"""Evaluation: whole-image inference over a split, confusion matrix on device, metrics and images on host."""

from __future__ import annotations

import json
import logging
import pathlib
from typing import Any

import jax
import ml_collections
import numpy as np
import tqdm

from segjax import metrics, models, sharding, viz
from segjax.data import datasets, pipeline
from segjax.train import checkpoint as checkpoint_lib
from segjax.train import setup as setup_lib
from segjax.train import steps

log = logging.getLogger(__name__)


def evaluate(exp: setup_lib.Experiment, state, split: str, *, num_visualizations: int = 0,
             progress: bool = True) -> tuple[np.ndarray, list[dict[str, np.ndarray]]]:
  """Runs `state` over every example of `split`.

  Returns:
    (confusion matrix [K, K] int64, up to `num_visualizations` dicts with image/label/pred/weight/index of
    this process's first examples).
  """
  config = exp.config
  source = datasets.data_source(config.dataset, split)
  sharding.check_batch_divisible(config.eval_batch_size, exp.mesh, "eval_batch_size")
  size = pipeline.eval_size(source, config.dataset.eval_size, models.size_divisor(exp.model))
  eval_fn = steps.jit_eval_step(exp.mesh, exp.state_sharding, model=exp.model, num_classes=exp.spec.num_classes,
                                mean=exp.mean, std=exp.std, normalization=exp.normalization)
  rows = sharding.process_rows(sharding.batch_sharding(exp.mesh), config.eval_batch_size, (*size, 1))
  acc = metrics.ConfusionAccumulator(exp.spec.num_classes)
  samples = []
  num_batches = pipeline.num_eval_batches(len(source), config.eval_batch_size)
  batches = pipeline.eval_batches(source, spec=exp.spec, batch_size=config.eval_batch_size, size=size, rows=rows)
  for batch in tqdm.tqdm(batches, total=num_batches, desc=f"eval {split}",
                         disable=not progress or jax.process_index() != 0, leave=False):
    cm, preds = eval_fn(state, pipeline.to_global(batch, exp.mesh, config.eval_batch_size))
    acc.add(cm)
    if len(samples) < num_visualizations:
      local_preds = pipeline.local_rows(preds, rows)
      for i in np.flatnonzero(batch["index"] >= 0)[:num_visualizations - len(samples)]:
        samples.append({"image": batch["image"][i], "label": batch["label"][i], "weight": batch["weight"][i],
                        "pred": local_preds[i], "index": int(batch["index"][i])})
  return acc.result(), samples


def write_report(out_dir: pathlib.Path, result: dict[str, Any], samples, spec: datasets.DatasetSpec) -> None:
  out_dir.mkdir(parents=True, exist_ok=True)
  (out_dir / "metrics.json").write_text(json.dumps(metrics.to_json_dict(result), indent=2) + "\n")
  image_dir = out_dir / "images"
  image_dir.mkdir(exist_ok=True)
  for s in samples:
    viz.save_panel(image_dir / f"{s['index']:05d}.png", s["image"], s["label"], s["pred"], s["weight"],
                   spec.palette)


def _no_checkpoint(workdir: str, workdir_path: pathlib.Path, ckpt_dir: pathlib.Path) -> str:
  """Why `workdir` has nothing to evaluate, and what to do, for the FileNotFoundError run_eval raises."""
  train = (f"train first with `python train.py --config=... --workdir={workdir}`, or pass the --workdir you trained "
           "in")
  if not workdir_path.is_dir():
    return f"--workdir={workdir} does not exist (from {pathlib.Path.cwd()}): {train}."
  if not ckpt_dir.is_dir():
    return f"{ckpt_dir} does not exist, so {workdir_path} is no training directory: {train}."
  entries = sorted(p.name for p in ckpt_dir.iterdir())
  # orbax writes a step to "<step>.orbax-checkpoint-tmp*" and renames it once complete.
  unfinished = [name for name in entries if ".orbax-checkpoint-tmp" in name]
  if unfinished:
    return (f"{ckpt_dir} holds no complete checkpoint, only unfinished saves ({', '.join(unfinished)}): the run "
            "stopped while saving (killed, or out of disk space). Rerun the same train.py command to train and "
            f"save again, or pass the --workdir of a finished run.")
  if not entries:
    return f"{ckpt_dir} is empty: no checkpoint was saved there yet; {train}."
  return f"{ckpt_dir} holds no checkpoint step directory (only {entries[:5]}): {train}."


def _check_split_not_empty(config: ml_collections.ConfigDict, split: str, spec: datasets.DatasetSpec) -> None:
  """Refuses a split (or tfds slice) without examples, which would give metrics of nothing. (datasets.data_source
  refuses empty splits of segjax's builders itself; this also covers other sources.)"""
  if len(datasets.data_source(config.dataset, split)) == 0:
    raise ValueError(f"Split {split!r} of dataset {spec.name!r} holds no examples: there is nothing to evaluate. "
                     f"Pass --split with a split that has examples ({', '.join(spec.splits)}), or a slice that "
                     "selects some (tfds slicing: 'test[:50]', 'test[10%:]').")


def run_eval(config: ml_collections.ConfigDict, workdir: str, *, split: str | None = None,
             checkpoint_step: int | None = None) -> dict[str, Any]:
  """What eval.py does: restore a checkpoint of `workdir`, evaluate `split`, write DIR/eval/<split>/.

  Raises:
    FileNotFoundError: `workdir` holds no complete checkpoint (missing, empty, or only an unfinished save),
      saying which and what to do.
    ValueError: a bad recipe, a checkpoint of another model or classes, an unknown checkpoint step, or a split
      without examples.
  """
  workdir_path = pathlib.Path(workdir)
  ckpt_dir = (workdir_path / "checkpoints").absolute()
  if not ckpt_dir.is_dir():
    raise FileNotFoundError(_no_checkpoint(workdir, workdir_path, ckpt_dir))
  exp = setup_lib.build(config)
  ckpt = checkpoint_lib.Checkpointer(workdir, keep=config.keep_checkpoints)
  steps_available = ckpt.all_steps()
  if not steps_available:
    ckpt.close()
    raise FileNotFoundError(_no_checkpoint(workdir, workdir_path, ckpt_dir))
  step = steps_available[-1] if checkpoint_step is None else checkpoint_step
  if step not in steps_available:
    ckpt.close()
    raise ValueError(f"--checkpoint_step={step} is not in {ckpt.directory}; available steps: {steps_available}")
  checkpoint_lib.check_compatible(ckpt, step, config, "evaluate")
  split = split or config.eval_split
  _check_split_not_empty(config, split, exp.spec)
  state = ckpt.restore(step, exp.abstract_state())
  ckpt.close()
  cm, samples = evaluate(exp, state, split, num_visualizations=config.num_visualizations)
  result = metrics.compute_metrics(cm, exp.spec.class_names)
  result.update(split=split, checkpoint_step=int(step), dataset=exp.spec.name)
  if jax.process_index() == 0:
    out_dir = workdir_path / "eval" / split
    write_report(out_dir, result, samples, exp.spec)
    print(f"\n{exp.spec.name} / {split}, checkpoint step {step}\n{metrics.format_table(result)}")
    print(f"Wrote {out_dir / 'metrics.json'} and {len(samples)} images under {out_dir / 'images'}")
  return result
