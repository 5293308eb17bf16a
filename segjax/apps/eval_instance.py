"""What eval.py does for an instance recipe (config.task="instance"): COCO box and mask AP of a checkpoint.

Writes DIR/eval/<split>/metrics.json (AP, AP50, AP75, APs/m/l and the AR numbers for boxes and masks, per-class
AP, the split, step and counts), per_class.csv, overlays of the first `config.num_visualizations` images under
images/ (masks, boxes, class names and scores), and prints the table; the numbers also go to the workdir's
TensorBoard logs and curves.png as eval/<split>/box_AP, mask_AP, ...
"""

from __future__ import annotations

import csv
import json
import math
import pathlib
from typing import Any

import jax
import ml_collections

from segjax import experiment
from segjax.evaluation import coco
from segjax.evaluation import instance as instance_eval
from segjax.training import curves, logs


def _finite(value):
  return None if isinstance(value, float) and math.isnan(value) else value


def run_eval(config: ml_collections.ConfigDict, workdir: str, *, split: str | None = None,
             checkpoint_step: int | None = None) -> dict[str, Any]:
  """Restores a checkpoint of `workdir`, scores `split` (default the recipe's eval_split) with COCO AP and writes
  DIR/eval/<split>/. Returns the result (segjax.evaluation.coco.CocoEvaluator.summarize, plus split and step).

  Raises:
    FileNotFoundError: `workdir` holds no complete checkpoint.
    ValueError: a bad recipe, a checkpoint of another model or class list, an unknown step or an empty split.
  """
  exp, state, step = experiment.restore(config, workdir, checkpoint_step)
  split = split or config.eval_split
  evaluation = exp.task.evaluator(exp).evaluate(state, split, num_visualizations=config.num_visualizations,
                                                 score_threshold=config.instance.score_threshold)
  result = dict(evaluation.details["result"])
  result.update(split=split, checkpoint_step=step, dataset=exp.spec.name, model=config.model.name)
  if jax.process_index() == 0:
    out_dir = pathlib.Path(workdir) / "eval" / split
    out_dir.mkdir(parents=True, exist_ok=True)
    # JSON has no NaN: a value COCO cannot give (no ground truth of that size or class) is written as null.
    clean = json.loads(json.dumps(result, default=float), parse_constant=lambda _: None)
    (out_dir / "metrics.json").write_text(json.dumps(clean, indent=2) + "\n")
    with (out_dir / "per_class.csv").open("w", newline="") as f:
      fields = [k for k in ("class_id", "name", "category_id", "box_ap", "mask_ap") if k in result["per_class"][0]]
      writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
      writer.writeheader()
      for row in result["per_class"]:
        writer.writerow({k: _finite(v) for k, v in row.items()})
    images = instance_eval.write_overlays(out_dir / "images", evaluation.overlays)
    print(f"\n{exp.spec.name} / {split}, checkpoint step {step}, {result['num_images']} images\n"
          f"{coco.format_table(result)}")
    print(f"Wrote {out_dir / 'metrics.json'}, {out_dir / 'per_class.csv'}"
          + (f" and {len(images)} overlays under {out_dir / 'images'}" if images else ""))
    log_scalars(workdir, split, step, evaluation.scalars)
  return result


def log_scalars(workdir: str, split: str, step: int, scalars: dict[str, float]) -> None:
  """eval.py's numbers in the workdir's TensorBoard logs (eval/<split>/<name> at the checkpoint's step), and
  DIR/curves.png redrawn with them."""
  board = logs.TensorBoard(workdir, enabled=True)
  try:
    board.scalars({"step": step, **{f"eval/{split}/{k}": v for k, v in scalars.items()}})
  finally:
    board.close()
  curves.plot_curves(workdir)
