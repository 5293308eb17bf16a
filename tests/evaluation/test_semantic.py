"""evaluate / eval.py: per-image statistics, the tiled path, ensembles and the written report, each against a
brute-force recomputation from `steps.predict` and numpy counting."""

import contextlib
import csv
import dataclasses
import io
import json

import jax
import numpy as np
import pytest

from segjax import config as config_lib
from segjax import experiment
from segjax.apps import eval as eval_app
from segjax.evaluation import inference
from segjax.evaluation import semantic as evaluate
from segjax.data import datasets, pipeline
from segjax import checkpoint, experiment
from segjax.training import loop, steps
from tests.conftest import REPO, predict_logits, random_checkpoint, tiny_config

SPLIT = "test[:10]"


@dataclasses.dataclass
class Run:
  config: object
  workdir: str
  exp: object
  state: object


def _run(shapes_data_dir, tmp_path_factory, seed, train: bool) -> Run:
  """A checkpoint trained for a few steps, or one of random parameters and BatchNorm statistics
  (`random_checkpoint`, no compile): a random net predicts nearly one class, too uniform to check counting."""
  config = tiny_config(shapes_data_dir, **{"seed": seed, "mesh.data": 1, "eval_batch_size": 4,
                                           "num_visualizations": 2, "metrics.num_ranked": 2})
  workdir = tmp_path_factory.mktemp(f"run{seed}")
  if train:
    loop.train_and_evaluate(config, workdir, progress=False, devices=jax.devices()[:1])
  else:
    random_checkpoint(config, workdir, seed=seed)
  exp, state, _ = experiment.restore(config, workdir)
  return Run(config, str(workdir), exp, state)


@pytest.fixture(scope="module")
def run_a(shapes_data_dir, tmp_path_factory):
  return _run(shapes_data_dir, tmp_path_factory, 0, train=True)


@pytest.fixture(scope="module")
def run_b(shapes_data_dir, tmp_path_factory):
  return _run(shapes_data_dir, tmp_path_factory, 1, train=False)


def _examples(run):
  spec = run.exp.spec
  source = datasets.data_source(run.config.dataset, SPLIT)
  return [pipeline.to_example(source[i], spec.ignore_label, spec.num_classes) for i in range(len(source))]


def _probs(run, image):
  logits = predict_logits(run.state, image[None], model=run.exp.model, mean=run.exp.mean, std=run.exp.std)
  return np.asarray(jax.nn.softmax(logits, -1))[0]


def _brute_force_cm(examples, preds, k):
  cm = np.zeros((len(examples), k, k), np.int64)
  for n, (ex, pred) in enumerate(zip(examples, preds)):
    for y, p, w in zip(ex.label.ravel(), pred.ravel(), ex.weight.ravel()):
      if w > 0:
        cm[n, y, p] += 1
  return cm


def _image_miou(cm):
  tp, gt, pr = np.diag(cm), cm.sum(1), cm.sum(0)
  union = gt + pr - tp
  return np.mean(tp[union > 0] / union[union > 0]) if (union > 0).any() else np.nan


def test_whole_image_evaluation_equals_brute_force_counts(run_a):
  k = run_a.exp.spec.num_classes
  examples = _examples(run_a)
  preds = [_probs(run_a, ex.image).argmax(-1) for ex in examples]
  reference = _brute_force_cm(examples, preds, k)
  ev = evaluate.evaluate(run_a.exp, run_a.state, SPLIT, num_visualizations=2, progress=False)
  np.testing.assert_array_equal(ev.cm, reference.sum(0))
  np.testing.assert_array_equal(ev.stats["tp"], np.stack([np.diag(c) for c in reference]))
  np.testing.assert_array_equal(ev.stats["fp"], reference.sum(1) - ev.stats["tp"])
  np.testing.assert_array_equal(ev.stats["fn"], reference.sum(2) - ev.stats["tp"])
  np.testing.assert_allclose(ev.scores, [_image_miou(c) for c in reference])
  assert [s["index"] for s in ev.samples] == [0, 1]
  np.testing.assert_array_equal(ev.samples[1]["pred"], preds[1])
  worst, best = ev.ranking.worst(), ev.ranking.best()
  assert [s["score"] for s in worst] == sorted(ev.scores)[:2]
  assert sorted(s["score"] for s in best) == sorted(ev.scores)[-2:]


def test_tiled_path_with_one_window_per_image_equals_whole(run_a):
  """One slide window covering the whole image computes exactly what whole-image inference does, but through the
  per-image path (host tiling, host counting)."""
  h, w = _examples(run_a)[0].label.shape
  whole = evaluate.evaluate(run_a.exp, run_a.state, SPLIT, progress=False)
  params = dataclasses.replace(inference.InferenceParams.from_config(run_a.config), mode="slide", tile_size=(h, w),
                               stride=(h, w))
  tiled = evaluate.evaluate(run_a.exp, run_a.state, SPLIT, params=params, progress=False)
  np.testing.assert_array_equal(tiled.cm, whole.cm)
  for key in whole.stats:
    np.testing.assert_array_equal(tiled.stats[key], whole.stats[key])


def test_ensemble_scores_the_mean_of_the_members_softmaxes(run_a, run_b):
  k = run_a.exp.spec.num_classes
  examples = _examples(run_a)
  preds = [(_probs(run_a, ex.image) + _probs(run_b, ex.image)).argmax(-1) for ex in examples]
  member_b = experiment.member(run_b.exp, run_b.state)
  ev = evaluate.evaluate(run_a.exp, run_a.state, SPLIT, members=[member_b], progress=False)
  np.testing.assert_array_equal(ev.cm, _brute_force_cm(examples, preds, k).sum(0))
  alone = evaluate.evaluate(run_a.exp, run_a.state, SPLIT, progress=False)
  assert not np.array_equal(ev.cm, alone.cm), "the second member changed nothing: the test could not fail"


def test_run_eval_writes_the_report_and_every_convention(run_a, run_b):
  config = run_a.config
  with contextlib.redirect_stdout(io.StringIO()) as out:
    result = eval_app.run_eval(config, run_a.workdir, split=SPLIT, members=[(run_b.config, run_b.workdir, None)])
  out_dir = f"{run_a.workdir}/eval/{SPLIT}"
  saved = json.loads(open(f"{out_dir}/metrics.json").read())
  assert saved["mean_iou"] == pytest.approx(result["mean_iou"])
  assert saved["ensemble"] == [run_a.workdir, run_b.workdir] and saved["num_images"] == 10
  # Same definitions under another name: MMSegmentation's mIoU is segjax's.
  assert result["conventions"]["mmseg"]["mIoU"] == pytest.approx(result["mean_iou"])
  with open(f"{out_dir}/per_class.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  assert [r["name"] for r in rows] == list(run_a.exp.spec.class_names)
  for name in ("confusion.png", "worst.png", "best.png"):
    assert (run_a.workdir + f"/eval/{SPLIT}/{name}") in out.getvalue()


def test_member_flag_is_parsed_or_refused_with_the_expected_form(tmp_path):
  with pytest.raises(ValueError, match="RECIPE:WORKDIR"):
    config_lib.parse_member(f"{REPO}/configs/quickstart.py")
  with pytest.raises(FileNotFoundError, match="nowhere.py does not exist"):
    config_lib.parse_member(f"{tmp_path}/nowhere.py:{tmp_path}")
  config, workdir, step = config_lib.parse_member(f"{REPO}/configs/quickstart.py:{tmp_path}:7")
  assert config.model.name == "unet" and workdir == str(tmp_path) and step == 7
