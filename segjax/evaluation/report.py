"""Evaluation reports: metrics.json, per_class.csv, a confusion-matrix heatmap, worst/best image montages.

`write_report` writes all of them for one evaluated split; each writer is usable on its own. matplotlib is
imported only by `plot_confusion`, so importing segjax stays light.
"""

from __future__ import annotations

import csv
import heapq
import itertools
import json
import logging
import math
import pathlib
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from PIL import Image

from segjax import viz
from segjax.evaluation import metrics

if TYPE_CHECKING:  # segjax.data imports tensorflow_datasets: seconds, for a type hint
  from segjax.data import datasets

log = logging.getLogger(__name__)

# Light for 0, dark for 1: a good prediction is a dark diagonal.
# Cells of classes without pixels (normalised plots).
EMPTY_COLOR = (0.75, 0.75, 0.75)
CMAP = "Blues"
# Past this many classes, the numbers no longer fit in the cells.
MAX_ANNOTATED_CLASSES = 30
_NORMALIZE = {"true": "rows: ground truth sums to 1", "pred": "columns: prediction sums to 1",
              None: "pixel counts"}
# Figure side in inches, at 100 dpi: capped so that ADE20K's 150 classes give 1600 x 1600 pixels, not a poster.
_MIN_SIDE, _MAX_SIDE, _DPI = 5.0, 16.0, 100
_MAX_NAME = 24


def write_json(path: str | pathlib.Path, result: dict[str, Any]) -> None:
  """Writes `result` as JSON, indent 2, NaN as null (`metrics.to_json_dict`)."""
  pathlib.Path(path).write_text(json.dumps(metrics.to_json_dict(result), indent=2) + "\n")


def _cell(value: Any) -> str:
  if isinstance(value, (float, np.floating)):
    # repr round-trips a float64 exactly; NaN (undefined: class absent) is an empty cell.
    return "" if math.isnan(value) else repr(float(value))
  if isinstance(value, np.integer):
    return str(int(value))
  return str(value)


def per_class_columns(result: dict[str, Any]) -> list[str]:
  """"name", then every other key of `result["per_class"]` entries, in order of first appearance."""
  columns = ["name"]
  for entry in result["per_class"]:
    columns += [key for key in entry if key not in columns]
  return columns


def write_per_class_csv(path: str | pathlib.Path, result: dict[str, Any]) -> None:
  """Writes one row per class of `result["per_class"]` (the output of `metrics.compute_metrics`).

  Columns: `per_class_columns(result)`. Floats are written with full precision (they parse back to the same
  float64), NaN and missing keys as empty cells. The summary numbers are in metrics.json only.
  """
  columns = per_class_columns(result)
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f)
    writer.writerow(columns)
    for entry in result["per_class"]:
      writer.writerow([_cell(entry[key]) if key in entry else "" for key in columns])


def _normalized(cm: np.ndarray, normalize: str | None) -> np.ndarray:
  """float64 copy of `cm`, rows or columns divided by their sums; NaN (no warning) where a sum is 0."""
  counts = cm.astype(np.float64)
  if normalize is None:
    return counts
  sums = counts.sum(axis=1, keepdims=True) if normalize == "true" else counts.sum(axis=0, keepdims=True)
  out = np.full_like(counts, np.nan)
  np.divide(counts, sums, out=out, where=np.broadcast_to(sums, counts.shape) > 0)
  return out


def _compact(value: float, normalize: str | None) -> str:
  if normalize is not None:
    return f"{value:.2f}"
  for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
    if value >= 10 * div:
      return f"{value / div:.0f}{suffix}"
  return f"{value:.0f}"


def plot_confusion(path: str | pathlib.Path, cm: np.ndarray, class_names: Sequence[str],
                   normalize: str | None = "true", title: str | None = None) -> np.ndarray:
  """Writes a PNG heatmap of the confusion matrix `cm`.

  Rows are the ground truth, columns the prediction. Normalised, a row (a column, with "pred") without pixels has
  no value and stays blank. Up to `MAX_ANNOTATED_CLASSES` classes each cell also shows its value; past that (ADE20K:
  150) only the colours, with small tick labels and the figure capped at 1600 x 1600 pixels.

  Args:
    path: the PNG to write.
    cm: [K, K] counts, rows = ground truth, columns = prediction.
    class_names: K names, on both axes (long names shortened).
    normalize: "true" divides each row by its sum (the fraction of a class's pixels given each label: the
      diagonal is the class accuracy), "pred" each column (the diagonal is the precision), None shows counts.
    title: above the plot; defaults to "Confusion matrix (<what normalize did>)".

  Returns:
    [K, K, 2] float: the (x, y) pixel position in the PNG (origin top left) of each cell's centre, [i, j] for
    ground truth i and prediction j.

  Raises:
    ValueError: `cm` is not square, `class_names` has another length, or `normalize` is unknown.
    ImportError: matplotlib is not installed.
  """
  cm = np.asarray(cm)
  if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
    raise ValueError(f"plot_confusion: the confusion matrix must be [K, K], got shape {cm.shape}")
  k = cm.shape[0]
  if len(class_names) != k:
    raise ValueError(f"plot_confusion: {len(class_names)} class names for a {k} x {k} confusion matrix; pass one "
                     "name per row")
  if normalize not in _NORMALIZE:
    raise ValueError(f"plot_confusion: normalize={normalize!r}; use 'true' (rows), 'pred' (columns) or None (counts)")
  try:
    # Figure without pyplot: no global figure registry, no GUI backend, nothing to close.
    import matplotlib  # pylint: disable=import-outside-toplevel
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=import-outside-toplevel
    from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError("plot_confusion needs matplotlib, which is not installed: pip install matplotlib") from e

  values = _normalized(cm, normalize)
  side = float(np.clip(0.35 * k + 3, _MIN_SIDE, _MAX_SIDE))
  fig = Figure(figsize=(side, side), dpi=_DPI, layout="constrained")
  ax = fig.add_subplot()
  # A class without pixels has no rate: grey, so it cannot be mistaken for a rate of 0 (the colour map's white).
  cmap = matplotlib.colormaps[CMAP].with_extremes(bad=EMPTY_COLOR)
  vmax = 1.0 if normalize is not None else max(float(np.nanmax(values)) if values.size else 0.0, 1.0)
  image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0.0, vmax=vmax, interpolation="nearest",
                    aspect="equal")
  fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02)

  names = [n if len(n) <= _MAX_NAME else n[:_MAX_NAME - 1] + "…" for n in map(str, class_names)]
  label_size = 8.0 if k <= MAX_ANNOTATED_CLASSES else float(np.clip(700 / k, 3, 8))
  ax.set_xticks(range(k), names, rotation=90, fontsize=label_size)
  ax.set_yticks(range(k), names, fontsize=label_size)
  ax.set_xlabel("prediction")
  ax.set_ylabel("ground truth")
  ax.set_title(title or f"Confusion matrix ({_NORMALIZE[normalize]})")
  if k <= MAX_ANNOTATED_CLASSES:
    # A cell is about side * 0.7 * 72 / k points wide; 4 characters must fit.
    font = float(np.clip(side * 0.7 * 72 / k / 3.2, 4, 10))
    for i, j in zip(*np.nonzero(~np.isnan(values))):
      ax.text(j, i, _compact(values[i, j], normalize), ha="center", va="center", fontsize=font,
              color="white" if values[i, j] > 0.5 * vmax else "black")

  # One render: the layout engine runs at the start of the draw, so the transforms read afterwards are those of
  # the pixels in the buffer (savefig would render twice, and a text-heavy figure costs seconds per render).
  canvas = FigureCanvasAgg(fig)
  canvas.draw()
  rgba = np.asarray(canvas.buffer_rgba())
  jj, ii = np.meshgrid(np.arange(k), np.arange(k))
  xy = ax.transData.transform(np.stack([jj.ravel(), ii.ravel()], axis=-1).astype(np.float64))
  centres = np.stack([xy[:, 0], rgba.shape[0] - xy[:, 1]], axis=-1).reshape(k, k, 2)
  Image.fromarray(rgba[..., :3]).save(path)
  return centres


class ImageRanking:
  """The k lowest- and k highest-scoring images seen, e.g. by image mIoU during evaluation; memory O(k).

  Ties are broken by image index (the lower index first in both lists), so the result does not depend on the
  order in which images arrive. NaN scores (an image with no valid pixel) are skipped.

  Usage:
    ranking = ImageRanking(4)
    for score, index in zip(scores, indices):
      if ranking.wants(score, index):  # builds the sample (host copies) only for images that are kept
        ranking.add(score, {"image": ..., "label": ..., "pred": ..., "weight": ..., "index": index})
    ranking.worst(), ranking.best()
  """

  def __init__(self, k: int):
    if k < 0:
      raise ValueError(f"ImageRanking: k={k}; the number of images to keep must be >= 0")
    self.k = k
    # Max-heaps (negated keys) of the kept samples: the root is the first to evict. A counter keeps heapq from
    # comparing sample dicts when two keys are equal.
    self._worst: list = []  # (-score, -index, n, sample): keeps the smallest (score, index)
    self._best: list = []  # (score, -index, n, sample): keeps the smallest (-score, index)
    self._count = itertools.count()

  def _keeps(self, heap: list, entry: tuple) -> bool:
    return len(heap) < self.k or entry[:2] > heap[0][:2]

  def wants(self, score: float, index: int) -> bool:
    """Whether `add(score, sample of image index)` would keep the sample (in either list)."""
    score = float(score)
    if self.k == 0 or math.isnan(score):
      return False
    return self._keeps(self._worst, (-score, -index)) or self._keeps(self._best, (score, -index))

  def add(self, score: float, sample: dict[str, Any]) -> None:
    """Offers `sample` (a dict with image, label, pred, weight arrays and int index) scored `score`.

    A kept sample is stored as a copy with "score" set, so it holds no view into a larger (batch) array.
    """
    score = float(score)
    if self.k == 0 or math.isnan(score):
      return
    index = int(sample["index"])
    kept = None
    for heap, key in ((self._worst, (-score, -index)), (self._best, (score, -index))):
      if not self._keeps(heap, key):
        continue
      if kept is None:
        kept = {name: np.array(v) if isinstance(v, np.ndarray) else v for name, v in sample.items()}
        kept.update(score=score, index=index)
      entry = (*key, next(self._count), kept)
      if len(heap) < self.k:
        heapq.heappush(heap, entry)
      else:
        heapq.heapreplace(heap, entry)

  def worst(self) -> list[dict[str, Any]]:
    """Up to k samples, lowest score first (ties: lower index first)."""
    return [e[3] for e in sorted(self._worst, key=lambda e: (-e[0], -e[1]))]

  def best(self) -> list[dict[str, Any]]:
    """Up to k samples, highest score first (ties: lower index first)."""
    return [e[3] for e in sorted(self._best, key=lambda e: (-e[0], -e[1]))]

  def __len__(self) -> int:
    return len(self._worst)


_ROW_GAP = 6


def montage(samples: Sequence[dict[str, Any]], palette: Sequence[Sequence[int]], title: str, *,
            max_side: int | None = 512, score_name: str = "score") -> tuple[np.ndarray, list[dict[str, Any]]]:
  """One image: `title`, then per sample a caption (image index and score) over `viz.panel` (image | ground
  truth | prediction | overlay, cropped to the valid region, each part downscaled to at most `max_side`).
  Rows narrower than the widest are padded with white on the right.

  Returns:
    (uint8 [H, W, 3], one dict per sample: "index", "score" and `viz.panel_boxes` (top, left, bottom, right) of
    "image", "label", "pred", "overlay" in the montage).
  """
  rows, captions = [], []
  for s in samples:
    rows.append(viz.panel(s["image"], s["label"], s["pred"], s["weight"], palette, max_side=max_side))
    captions.append(f"image {int(s['index'])}   {score_name} {float(s['score']):.4f}")
  header = f"{title}   (image | ground truth | prediction | overlay)"
  width = max([viz.text_size(header)[0] + 6] + [r.shape[1] for r in rows]
              + [viz.text_size(c)[0] + 6 for c in captions])
  blocks = [viz.caption(np.zeros((0, width, 3), np.uint8), header, width=width)]
  layout, top = [], blocks[0].shape[0]
  for s, row, text in zip(samples, rows, captions):
    block = viz.caption(row, text, width=width)
    strip = viz.caption_height(text)
    layout.append({"index": int(s["index"]), "score": float(s["score"]), **viz.panel_boxes(row.shape, top + strip)})
    blocks += [block, np.full((_ROW_GAP, width, 3), 255, np.uint8)]
    top += block.shape[0] + _ROW_GAP
  return np.concatenate(blocks, axis=0), layout


def save_montage(path: str | pathlib.Path, samples: Sequence[dict[str, Any]], palette: Sequence[Sequence[int]],
                 title: str, *, max_side: int | None = 512, score_name: str = "score") -> list[dict[str, Any]]:
  """Writes `montage(...)` to the PNG `path` and returns its layout (see `montage`)."""
  rgb, layout = montage(samples, palette, title, max_side=max_side, score_name=score_name)
  Image.fromarray(rgb).save(path)
  return layout


def write_report(out_dir: str | pathlib.Path, result: dict[str, Any], cm: np.ndarray, spec: datasets.DatasetSpec,
                 samples: Sequence[dict[str, Any]] = (), ranking: ImageRanking | None = None, *,
                 score_name: str = "image mIoU", max_side: int | None = 512) -> dict[str, Any]:
  """Writes the evaluation report of one split into `out_dir` (created if missing).

  Files: metrics.json (`write_json`), per_class.csv (`write_per_class_csv`), confusion.png (`plot_confusion`,
  row-normalised; skipped with a warning when matplotlib is missing), worst.png and best.png (`save_montage` of
  `ranking`, when given and non-empty), images/<index:05d>.png (`viz.save_panel` of each of `samples`).

  Args:
    out_dir: the directory to write into.
    result: `metrics.compute_metrics(cm, ...)`, possibly with extra keys (split, dataset, checkpoint_step).
    cm: the [K, K] confusion matrix `result` was computed from.
    spec: the dataset's `datasets.DatasetSpec` (its palette colours the label maps).
    samples: dicts with image, label, pred, weight and index, drawn one file each.
    ranking: the worst- and best-scoring images, drawn as worst.png and best.png.
    score_name: what the ranking's scores are, for the montage captions.
    max_side: the longest side of each montage panel, in pixels.

  Returns:
    {"metrics", "per_class", "confusion" (absent when skipped), "worst", "best" (absent without ranking): paths,
    "images": list of paths}.
  """
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  paths: dict[str, Any] = {"metrics": out_dir / "metrics.json", "per_class": out_dir / "per_class.csv"}
  write_json(paths["metrics"], result)
  write_per_class_csv(paths["per_class"], result)
  names = [c["name"] for c in result["per_class"]]
  where = " / ".join(str(result[key]) for key in ("dataset", "split") if key in result)
  try:
    plot_confusion(out_dir / "confusion.png", cm, names,
                   title=f"{where + ': ' if where else ''}confusion matrix\n(each ground-truth row sums to 1)")
    paths["confusion"] = out_dir / "confusion.png"
  except ImportError as e:
    log.warning("Not writing %s: %s", out_dir / "confusion.png", e)
  if ranking is not None and len(ranking):
    for kind, chosen in (("worst", ranking.worst()), ("best", ranking.best())):
      paths[kind] = out_dir / f"{kind}.png"
      title = f"{where + ': ' if where else ''}{len(chosen)} {kind} images by {score_name}"
      save_montage(paths[kind], chosen, spec.palette, title, max_side=max_side, score_name=score_name)
  image_dir = out_dir / "images"
  image_dir.mkdir(exist_ok=True)
  paths["images"] = []
  for s in samples:
    paths["images"].append(image_dir / f"{int(s['index']):05d}.png")
    viz.save_panel(paths["images"][-1], s["image"], s["label"], s["pred"], s["weight"], spec.palette)
  return paths
