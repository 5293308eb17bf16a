"""DIR/curves.png: training loss, learning rate and evaluation metrics against step, drawn from DIR/metrics.jsonl
(like MMSegmentation's analyze_logs). Evaluations written by eval.py (DIR/eval/<split>/metrics.json) are marked at
their checkpoint's step in the matching panels.

Training draws it at each evaluation and when it ends or stops; `python -m segjax.training.curves DIR` draws it again.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from segjax.training import logs

CURVES_FILE = "curves.png"
EVAL_KEYS = ("pixel_accuracy", "mean_accuracy", "mean_iou", "fw_iou", "mean_dice")
COLUMNS = 3
PANEL_INCHES = (5.0, 3.5)
DPI = 100


def panel_grid(num_panels: int) -> tuple[int, int]:
  """(rows, columns) of the figure; it is COLUMNS * 500 pixels wide and rows * 350 pixels high."""
  return -(-num_panels // COLUMNS), COLUMNS


def _series(records: list[dict[str, Any]]) -> dict[str, dict[int, float]]:
  """key -> {step: value}; of a step logged twice (a run resumed from an earlier checkpoint), the last record."""
  series: dict[str, dict[int, float]] = {}
  for record in records:
    if "step" not in record:
      continue
    for key, value in record.items():
      if key not in ("step", "time") and isinstance(value, (int, float)) and not isinstance(value, bool):
        series.setdefault(key, {})[int(record["step"])] = float(value)
  return series


def _eval_reports(workdir: pathlib.Path) -> dict[str, tuple[int, dict[str, float]]]:
  """eval.py's results: split -> (checkpoint step, metrics)."""
  reports = {}
  for path in sorted(workdir.glob("eval/*/metrics.json")):
    try:
      result = json.loads(path.read_text())
      reports[result.get("split", path.parent.name)] = (int(result["checkpoint_step"]),
                                                        {k: float(result[k]) for k in EVAL_KEYS if k in result})
    except (OSError, ValueError, KeyError, TypeError):
      continue
  return reports


def plot_curves(workdir: str | pathlib.Path) -> pathlib.Path | None:
  """Draws DIR/curves.png (written atomically); None when metrics.jsonl holds no record yet."""
  workdir = pathlib.Path(workdir)
  series = _series(logs.read_metrics(workdir))
  reports = _eval_reports(workdir)
  if not series and not reports:
    return None
  eval_names = [k for k in EVAL_KEYS if f"eval/{k}" in series or any(k in m for _, m in reports.values())]
  eval_names += sorted(k[5:] for k in series if k.startswith("eval/") and k[5:] not in eval_names)
  panels = [("loss", "training loss"), ("learning_rate", "learning rate")]
  panels += [(f"eval/{name}", f"evaluation {name}") for name in eval_names]
  all_steps = [s for key in ("loss", "learning_rate") for s in series.get(key, {})]
  rows, cols = panel_grid(len(panels))
  fig = Figure(figsize=(PANEL_INCHES[0] * cols, PANEL_INCHES[1] * rows), dpi=DPI)
  FigureCanvasAgg(fig)
  for i, (key, title) in enumerate(panels):
    ax = fig.add_subplot(rows, cols, i + 1)
    points = series.get(key, {})
    if points:
      steps = sorted(points)
      ax.plot(steps, [points[s] for s in steps], marker="o" if key.startswith("eval/") else None,
              markersize=3, label="during training" if key.startswith("eval/") else None)
    if key.startswith("eval/"):
      for split, (step, values) in reports.items():
        if key[5:] in values:
          ax.plot([step], [values[key[5:]]], marker="*", markersize=10, linestyle="none", label=f"eval.py {split}")
      if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
      lows, highs = ax.get_ylim()
      if highs > 1.0 >= max((line.get_ydata().max() for line in ax.get_lines()), default=0.0):
        # The metrics are fractions: matplotlib's margin around a lone point must not suggest values over 1.
        ax.set_ylim(max(lows, 0.0), 1.005)
      if all_steps:  # the training panels' step axis, so that a lone eval.py point sits where it was measured
        margin = 0.03 * max(max(all_steps) - min(all_steps), 1)
        ax.set_xlim(min(all_steps) - margin, max(all_steps) + margin)
    if key == "loss" and points and min(points.values()) > 0:
      ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.grid(True, alpha=0.3)
  fig.suptitle(str(workdir))
  fig.tight_layout()
  path = workdir / CURVES_FILE
  tmp = path.with_name(f".{path.name}.tmp")
  fig.savefig(tmp, format="png", dpi=DPI)
  os.replace(tmp, path)
  return path


def main(argv: list[str]) -> int:
  if len(argv) != 2:
    sys.stderr.write("usage: python -m segjax.training.curves DIR (a training directory holding metrics.jsonl)\n")
    return 2
  path = plot_curves(argv[1])
  if path is None:
    sys.stderr.write(f"segjax.training.curves: error: {argv[1]} holds no metrics.jsonl records (nor eval.py results) to "
                     "draw: pass the --workdir of a training run.\n")
    return 2
  print(f"Wrote {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
