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


def _local_rows(x: jax.Array) -> np.ndarray:
  """This process's rows of a batch-sharded array, in the order of its local batch."""
  shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
  rows, seen = [], set()
  for s in shards:
    start = s.index[0].start or 0
    if start not in seen:  # replicas along other mesh axes hold the same rows
      seen.add(start)
      rows.append(np.asarray(s.data))
  return np.concatenate(rows)


def evaluate(exp: setup_lib.Experiment, state, split: str, *, num_visualizations: int = 0,
             progress: bool = True) -> tuple[np.ndarray, list[dict[str, np.ndarray]]]:
  """Runs `state` over every example of `split`.

  Returns:
    (confusion matrix [K, K] int64, up to `num_visualizations` dicts with image/label/pred/weight/index of
    this process's first examples).
  """
  config = exp.config
  source = datasets.data_source(config.dataset, split)
  sharding.check_batch_divisible(config.eval_batch_size // jax.process_count(), exp.mesh, "eval_batch_size")
  size = pipeline.eval_size(source, config.dataset.eval_size, models.size_divisor(exp.model))
  eval_fn = steps.jit_eval_step(exp.mesh, model=exp.model, num_classes=exp.spec.num_classes, mean=exp.mean,
                                std=exp.std, normalization=exp.normalization)
  data_sharding = sharding.batch_sharding(exp.mesh)
  acc = metrics.ConfusionAccumulator(exp.spec.num_classes)
  samples = []
  num_batches = pipeline.num_eval_batches(len(source), config.eval_batch_size, jax.process_count())
  batches = pipeline.eval_batches(source, spec=exp.spec, batch_size=config.eval_batch_size, size=size)
  for batch in tqdm.tqdm(batches, total=num_batches, desc=f"eval {split}", disable=not progress,
                         leave=False):
    cm, preds = eval_fn(state, pipeline.to_global(batch, data_sharding))
    acc.add(cm)
    if len(samples) < num_visualizations:
      local_preds = _local_rows(preds)
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


def run_eval(config: ml_collections.ConfigDict, workdir: str, *, split: str | None = None,
             checkpoint_step: int | None = None) -> dict[str, Any]:
  """What eval.py does: restore a checkpoint of `workdir`, evaluate `split`, write DIR/eval/<split>/."""
  workdir_path = pathlib.Path(workdir)
  if not (workdir_path / "checkpoints").is_dir():
    raise FileNotFoundError(f"{workdir_path / 'checkpoints'} does not exist: train first with "
                            f"`python train.py --config=... --workdir={workdir}`, or pass the workdir you trained in.")
  exp = setup_lib.build(config)
  ckpt = checkpoint_lib.Checkpointer(workdir, keep=config.keep_checkpoints)
  steps_available = ckpt.all_steps()
  if not steps_available:
    raise FileNotFoundError(f"No complete checkpoint in {ckpt.directory}: train first, or check the workdir.")
  step = steps_available[-1] if checkpoint_step is None else checkpoint_step
  if step not in steps_available:
    raise ValueError(f"--checkpoint_step={step} is not in {ckpt.directory}; available steps: {steps_available}")
  checkpoint_lib.check_compatible(ckpt, step, config, "evaluate")
  state = ckpt.restore(step, exp.abstract_state())
  ckpt.close()
  split = split or config.eval_split
  cm, samples = evaluate(exp, state, split, num_visualizations=config.num_visualizations)
  result = metrics.compute_metrics(cm, exp.spec.class_names)
  result.update(split=split, checkpoint_step=int(step), dataset=exp.spec.name)
  if jax.process_index() == 0:
    out_dir = workdir_path / "eval" / split
    write_report(out_dir, result, samples, exp.spec)
    print(f"\n{exp.spec.name} / {split}, checkpoint step {step}\n{metrics.format_table(result)}")
    print(f"Wrote {out_dir / 'metrics.json'} and {len(samples)} images under {out_dir / 'images'}")
  return result
