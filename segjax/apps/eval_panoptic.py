"""What eval.py does for a panoptic recipe (config.task="panoptic"): Panoptic Quality of a checkpoint.

Writes DIR/eval/<split>/metrics.json (PQ, SQ, RQ for all, things and stuff with their category counts, per
category PQ/SQ/RQ/TP/FP/FN, and under "semantic" segjax's semantic metrics of the same panoptic predictions:
mIoU, pixel accuracy, per-category IoU ...), per_class.csv, GT | prediction panels of the first
`config.num_visualizations` images under images/, and prints the tables; the numbers also go to the workdir's
TensorBoard logs and curves.png as eval/<split>/PQ, PQ_th, PQ_st, mean_iou, ...
"""

from __future__ import annotations

import csv
import json
import pathlib
from typing import Any

import jax
import ml_collections

from segjax import experiment
from segjax.apps import eval_instance
from segjax.evaluation import metrics, panoptic_quality
from segjax.evaluation import instance as instance_eval
from segjax.evaluation import panoptic as panoptic_eval

CSV_FIELDS = ("category_id", "name", "isthing", "pq", "sq", "rq", "tp", "fp", "fn", "iou")


def run_eval(config: ml_collections.ConfigDict, workdir: str, *, split: str | None = None,
             checkpoint_step: int | None = None) -> dict[str, Any]:
  """Restores a checkpoint of `workdir`, scores `split` (default the recipe's eval_split) and writes
  DIR/eval/<split>/. Returns the result (segjax.evaluation.panoptic.Evaluator's, plus split, step, dataset).

  Raises:
    FileNotFoundError: `workdir` holds no complete checkpoint.
    ValueError: a bad recipe, a checkpoint of another model or category list, an unknown step or an empty split.
  """
  exp, state, step = experiment.restore(config, workdir, checkpoint_step)
  split = split or config.eval_split
  evaluation = exp.task.evaluator(exp).evaluate(state, split, num_visualizations=config.num_visualizations)
  result = dict(evaluation.details["result"])
  result.update(split=split, checkpoint_step=step, dataset=exp.spec.name, model=config.model.name,
                fusion=dict(config.panoptic.fusion))
  if jax.process_index() == 0:
    out_dir = pathlib.Path(workdir) / "eval" / split
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(panoptic_eval.json_result(result), indent=2) + "\n")
    ious = {row["name"]: row["iou"] for row in result["semantic"]["per_class"]}
    with (out_dir / "per_class.csv").open("w", newline="") as f:
      writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
      writer.writeheader()
      for cat in exp.spec.categories:
        row = result["per_category"].get(cat.id, {"pq": None, "sq": None, "rq": None, "tp": 0, "fp": 0, "fn": 0})
        writer.writerow({**row, "category_id": cat.id, "name": cat.name, "isthing": cat.isthing,
                         "iou": ious.get(cat.name)})
    images = instance_eval.write_overlays(out_dir / "images", evaluation.overlays)
    print(f"\n{exp.spec.name} / {split}, checkpoint step {step}, {result['num_images']} images\n"
          f"{panoptic_quality.format_table(result)}\n\nSemantic metrics of the panoptic predictions:\n"
          f"{metrics.format_table(result['semantic'])}")
    print(f"Wrote {out_dir / 'metrics.json'}, {out_dir / 'per_class.csv'}"
          + (f" and {len(images)} overlays under {out_dir / 'images'}" if images else ""))
    eval_instance.log_scalars(workdir, split, step, evaluation.scalars)
  return result
