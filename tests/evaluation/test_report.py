"""Tests of segjax.report: the CSV and JSON read back, the confusion heatmap's pixels, the image ranking against a
brute-force sort, and the montage's rows against viz.colorize."""

import csv
import json
import math
import types
import warnings

import matplotlib
import numpy as np
from PIL import Image
import pytest

from segjax import viz
from segjax.evaluation import metrics
from segjax.evaluation import report

PALETTE = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255)]


def _result_with_nans():
  # Class 2 absent from ground truth and prediction (IoU NaN), class 3 only predicted (accuracy NaN).
  cm = np.array([[50, 3, 0, 2], [4, 17, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
  result = metrics.compute_metrics(cm, ["road", "sky, cloud", "car", "ped"])
  # A key another metric might add, as a generic per-class column.
  for i, entry in enumerate(result["per_class"]):
    entry["extra"] = 1 / (i + 3)
  return cm, result


def test_per_class_csv_reads_back(tmp_path):
  _, result = _result_with_nans()
  path = tmp_path / "per_class.csv"
  report.write_per_class_csv(path, result)
  with open(path, newline="", encoding="utf-8") as f:
    rows = list(csv.reader(f))
  keys = list(result["per_class"][0])
  assert rows[0] == ["name"] + [k for k in keys if k != "name"]
  assert len(rows) == 1 + len(result["per_class"])
  for row, entry in zip(rows[1:], result["per_class"]):
    parsed = dict(zip(rows[0], row))
    assert parsed["name"] == entry["name"]
    for key, value in entry.items():
      if key == "name":
        continue
      if isinstance(value, float) and math.isnan(value):
        assert parsed[key] == "", key
      else:
        assert type(value)(parsed[key]) == value, key  # exact, not approximately
  assert any(r[rows[0].index("iou")] == "" for r in rows[1:])  # the NaN case was exercised


def test_json_nan_is_null(tmp_path):
  _, result = _result_with_nans()
  result["split"] = "val"
  report.write_json(tmp_path / "m.json", result)
  text = (tmp_path / "m.json").read_text()
  assert "NaN" not in text  # Python's json would read it back, but it is not JSON
  back = json.loads(text)
  assert back["per_class"][2]["iou"] is None and back["split"] == "val"
  assert back["mean_iou"] == result["mean_iou"]


@pytest.mark.parametrize("normalize", ["true", None])
def test_confusion_cells_have_the_colour_of_their_value(tmp_path, normalize):
  # A diagonal matrix with one class without pixels: normalised, its row has no values and must be drawn empty (grey),
  # without NaN warnings.
  cm = np.diag([5, 3, 0, 7])
  path = tmp_path / "c.png"
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    centres = report.plot_confusion(path, cm, ["a", "b", "c", "d"], normalize=normalize)
  png = np.asarray(Image.open(path).convert("RGB")).astype(int)
  assert 400 <= png.shape[0] <= 1600 and 400 <= png.shape[1] <= 1600
  cmap = matplotlib.colormaps[report.CMAP]
  pitch = centres[1, 1] - centres[0, 0]
  assert pitch[0] > 20 and pitch[1] > 20  # cells of tens of pixels, in image order (x right, y down)

  def colour(i, j):
    # Off the centre, where the number is written.
    x, y = centres[i, j] - 0.3 * pitch
    return png[int(round(y)), int(round(x))]

  vmax = 1.0 if normalize else 7.0
  for i in range(4):
    for j in range(4):
      if i == 2 and normalize:  # (as counts, its zeros are values like any other)
        expected = np.round(255 * np.array(report.EMPTY_COLOR))
      else:
        expected = np.round(255 * np.array(cmap(cm[i, j] / cm[i].sum() if normalize else cm[i, j] / vmax)[:3]))
      np.testing.assert_allclose(colour(i, j), expected, atol=2, err_msg=f"cell {i, j}")
  assert np.abs(colour(0, 0) - colour(0, 1)).sum() > 200  # 1.0 and 0.0 far apart in colour


def test_confusion_ade20k_size(tmp_path):
  k = 150
  cm = np.random.default_rng(0).integers(0, 1000, (k, k)) + np.diag(np.full(k, 50_000))
  names = [f"class {i}; a long ADE20K-style name, with synonyms" for i in range(k)]
  centres = report.plot_confusion(tmp_path / "c.png", cm, names)
  png = np.asarray(Image.open(tmp_path / "c.png").convert("RGB")).astype(int)
  assert png.shape[0] <= 1600 and png.shape[1] <= 1600
  # Cells of a few pixels, without numbers: the centre pixel has the colour of the row-normalised value.
  rows = cm / cm.sum(axis=1, keepdims=True)
  cmap = matplotlib.colormaps[report.CMAP]
  for i, j in [(0, 0), (75, 75), (149, 149), (0, 149), (149, 0), (40, 90)]:
    x, y = np.round(centres[i, j]).astype(int)
    np.testing.assert_allclose(png[y, x], np.round(255 * np.array(cmap(rows[i, j])[:3])), atol=3,
                               err_msg=f"cell {i, j}")


def test_confusion_rejects_bad_input(tmp_path):
  with pytest.raises(ValueError, match="2 class names for a 3 x 3"):
    report.plot_confusion(tmp_path / "c.png", np.eye(3), ["a", "b"])
  with pytest.raises(ValueError, match="normalize='all'"):
    report.plot_confusion(tmp_path / "c.png", np.eye(2), ["a", "b"], normalize="all")


def test_ranking_matches_brute_force_sort():
  rng = np.random.default_rng(0)
  scores = rng.integers(0, 20, 200) / 20.0  # many ties
  scores[rng.choice(200, 30, replace=False)] = np.nan
  indices = rng.permutation(200)  # images arrive out of index order
  for k in (0, 1, 7, 200, 300):
    ranking = report.ImageRanking(k)
    wanted = 0
    for score, index in zip(scores, indices):
      if ranking.wants(score, int(index)):
        wanted += 1
        ranking.add(score, {"index": index, "pred": np.zeros((2, 2))})
      else:  # `wants` says no exactly when `add` would keep nothing
        before = [s["index"] for s in ranking.worst() + ranking.best()]
        ranking.add(score, {"index": index})
        assert [s["index"] for s in ranking.worst() + ranking.best()] == before
    valid = [(float(s), int(i)) for s, i in zip(scores, indices) if not math.isnan(s)]
    expected_worst = sorted(valid)[:k]
    expected_best = sorted(valid, key=lambda p: (-p[0], p[1]))[:k]
    assert [(s["score"], s["index"]) for s in ranking.worst()] == expected_worst, k
    assert [(s["score"], s["index"]) for s in ranking.best()] == expected_best, k
    assert wanted <= 200


def test_ranking_copies_views():
  batch = np.zeros((4, 3, 3), np.uint8)
  ranking = report.ImageRanking(1)
  ranking.add(0.5, {"index": 0, "pred": batch[0]})
  batch[0] = 7
  assert ranking.worst()[0]["pred"].base is None and not ranking.worst()[0]["pred"].any()


def _sample(rng, height, width, index, score, pad=0, block=1):
  label = np.kron(rng.integers(0, 6, (height // block, width // block)), np.ones((block, block), np.int64))
  pred = np.kron(rng.integers(0, 6, (height // block, width // block)), np.ones((block, block), np.int64))
  weight = np.ones((height, width), np.float32)
  weight[rng.random((height, width)) < 0.1] = 0  # ignored pixels inside
  image = rng.integers(0, 256, (height, width, 3), np.uint8)
  if pad:  # evaluation padding, bottom and right, weight 0
    image, label, pred = (np.pad(a, [(0, pad), (0, pad)] + [(0, 0)] * (a.ndim - 2)) for a in (image, label, pred))
    weight = np.pad(weight, [(0, pad), (0, pad)])
  return dict(image=image, label=label, pred=pred, weight=weight, index=index, score=score)


def test_montage_rows_hold_the_panels(tmp_path):
  rng = np.random.default_rng(1)
  samples = [_sample(rng, 12, 20, 3, 0.25), _sample(rng, 20, 16, 11, 0.5, pad=5), _sample(rng, 8, 8, 40, 0.75),
             _sample(rng, 40, 24, 2, 0.9, block=2)]
  path = tmp_path / "worst.png"
  layout = report.save_montage(path, samples, PALETTE, "worst", max_side=20)
  png = np.asarray(Image.open(path).convert("RGB"))
  assert [row["index"] for row in layout] == [3, 11, 40, 2]
  tops = [row["pred"][0] for row in layout]
  assert tops == sorted(tops)
  for s, row in zip(samples, layout):
    label, pred, weight = s["label"], s["pred"], s["weight"]
    if s["index"] == 11:  # the padding is cropped away
      label, pred, weight = label[:20, :16], pred[:20, :16], weight[:20, :16]
    if s["index"] == 2:  # 40 x 24 in 2x2 blocks, at most 20 per side: every other pixel
      label, pred, weight = label[::2, ::2], pred[::2, ::2], weight[1::2, 1::2]
    if s["index"] != 2:  # (which weight pixel a 2x downscale samples is its own choice)
      top, left, bottom, right = row["pred"]
      np.testing.assert_array_equal(png[top:bottom, left:right], viz.colorize(pred, PALETTE, weight))
      top, left, bottom, right = row["label"]
      np.testing.assert_array_equal(png[top:bottom, left:right], viz.colorize(label, PALETTE, weight))
    top, left, bottom, right = row["image"]
    if s["index"] != 2:
      np.testing.assert_array_equal(png[top:bottom, left:right], s["image"][:bottom - top, :right - left])
    # Right of the row's panels: white padding up to the widest row.
    top, _, bottom, right = row["overlay"]
    assert (png[top:bottom, right:] == 255).all()
  assert png.shape[1] >= max(r["overlay"][3] for r in layout)


def test_write_report_files(tmp_path):
  cm, result = _result_with_nans()
  result.update(split="val", dataset="toy")
  spec = types.SimpleNamespace(palette=PALETTE)
  rng = np.random.default_rng(2)
  ranking = report.ImageRanking(2)
  for i in range(5):
    ranking.add(i / 5, _sample(rng, 8, 10, i, 0.0))
  samples = [_sample(rng, 8, 10, 7, 0.0)]
  paths = report.write_report(tmp_path / "eval", result, cm, spec, samples, ranking)
  names = {p.name for p in (tmp_path / "eval").iterdir()}
  assert names == {"metrics.json", "per_class.csv", "confusion.png", "worst.png", "best.png", "images"}
  assert [p.name for p in paths["images"]] == ["00007.png"]
  with Image.open(paths["images"][0]) as img:
    assert img.size == (4 * 10 + 3 * viz.SEPARATOR, 8)
  assert json.loads(paths["metrics"].read_text())["dataset"] == "toy"
  # Without a ranking: no montages.
  paths = report.write_report(tmp_path / "eval2", result, cm, spec)
  assert "worst" not in paths and not (tmp_path / "eval2" / "worst.png").exists()


def _reference_panel_part(classes, scored, palette):
  """What a ground-truth or prediction panel must show, by a plain loop: the class's palette colour where scored,
  else the stripes of two greys ((row + col) // 4 even: (112,)*3, odd: (160,)*3)."""
  out = np.zeros((*classes.shape, 3), np.uint8)
  for r in range(classes.shape[0]):
    for c in range(classes.shape[1]):
      out[r, c] = palette[classes[r, c]] if scored[r, c] else ((112,) * 3 if (r + c) // 4 % 2 == 0 else (160,) * 3)
  return out


def test_panels_mark_unscored_pixels_in_truth_and_prediction(tmp_path):
  # A 10 x 12 image whose border (2 pixels) a validity mask excludes, a void block inside, and eval padding of 3
  # rows at the bottom and 5 columns at the right (weight 0, label 0, and a prediction there anyway).
  rng = np.random.default_rng(3)
  h, w = 10, 12
  label = rng.integers(0, 6, (h + 3, w + 5))
  pred = rng.integers(0, 6, (h + 3, w + 5))
  image = rng.integers(0, 256, (h + 3, w + 5, 3), np.uint8)
  weight = np.zeros((h + 3, w + 5), np.float32)
  weight[2:h - 2, 2:w - 2] = 1  # the validity mask
  weight[4:6, 5:8] = 0  # void labels
  weight[h - 1, w - 1] = 1  # one scored corner pixel, so cropping keeps the whole image and drops the padding
  path = tmp_path / "panel.png"
  viz.save_panel(path, image, label, pred, weight, PALETTE)
  png = np.asarray(Image.open(path).convert("RGB"))
  boxes = viz.panel_boxes(png.shape)
  scored = weight[:h, :w] > 0
  for name, classes in (("label", label), ("pred", pred)):
    top, left, bottom, right = boxes[name]
    got = png[top:bottom, left:right]
    assert got.shape == (h, w, 3)
    np.testing.assert_array_equal(got, _reference_panel_part(classes[:h, :w], scored, PALETTE))
  # The overlay shows no class colour where nothing is scored: the image blended with the stripes.
  top, left, bottom, right = boxes["overlay"]
  stripes = _reference_panel_part(np.zeros((h, w), np.int64), np.zeros((h, w), bool), PALETTE)
  expected = np.round(0.5 * image[:h, :w].astype(np.float32) + 0.5 * stripes.astype(np.float32)).astype(np.uint8)
  got = png[top:bottom, left:right]
  np.testing.assert_array_equal(got[~scored], expected[~scored])

  # Padding that cropping cannot remove: an image without any scored pixel keeps its padding, and every truth and
  # prediction pixel is striped.
  nothing = viz.panel(image, label, pred, np.zeros_like(weight), PALETTE)
  boxes = viz.panel_boxes(nothing.shape)
  for name in ("label", "pred"):
    top, left, bottom, right = boxes[name]
    np.testing.assert_array_equal(nothing[top:bottom, left:right],
                                  _reference_panel_part(label, np.zeros(label.shape, bool), PALETTE))
