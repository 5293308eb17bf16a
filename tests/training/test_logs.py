"""TensorBoard event files, config.json and curves.png of a training run, read back with TensorBoard's own
event reader (the independent reference) and compared with metrics.jsonl."""

import json

import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image

from segjax.apps import eval as eval_app
from segjax.training import curves, logs, loop
from tests.conftest import tiny_config

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def _read_events(directory):
  acc = event_accumulator.EventAccumulator(str(directory), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
  acc.Reload()
  return acc


def _expected(records):
  """tag -> {step: value} from metrics.jsonl, the last record of a step logged twice."""
  expected = {}
  for record in records:
    for key, value in record.items():
      if key not in ("step", "time"):
        expected.setdefault(logs.scalar_tag(key), {})[record["step"]] = value
  return expected


def test_training_writes_tensorboard_config_and_curves_and_a_resumed_run_appends(shapes_data_dir, tmp_path):
  config = tiny_config(shapes_data_dir, eval_every_steps=2, eval_split="validation[:8]", num_visualizations=2)
  workdir = tmp_path / "run"
  loop.train_and_evaluate(config, workdir, progress=False, devices=jax.devices()[:1])
  first_files = sorted((workdir / logs.TENSORBOARD_DIR).iterdir())
  assert len(first_files) == 1

  resumed = ml_collections.ConfigDict(config.to_dict())
  resumed.num_train_steps = 6
  loop.train_and_evaluate(resumed, workdir, progress=False, devices=jax.devices()[:1])
  files = sorted((workdir / logs.TENSORBOARD_DIR).iterdir())
  assert len(files) == 2 and files[0] == first_files[0]  # the resumed run appended a file, the first one stays

  records = logs.read_metrics(workdir)
  assert [r["step"] for r in records if "loss" in r] == [1, 2, 4, 5, 6]
  assert [r["step"] for r in records if "eval/mean_iou" in r] == [2, 4, 6]
  acc = _read_events(workdir / logs.TENSORBOARD_DIR)
  expected = _expected(records)
  tags = acc.Tags()
  assert set(expected) <= set(tags["scalars"]), tags["scalars"]
  for tag in ("train/loss", "train/learning_rate", "train/images_per_second", "train/train_pixel_accuracy",
              "train/grad_norm", "eval/mean_iou", "eval/pixel_accuracy"):
    events = acc.Scalars(tag)
    assert [e.step for e in events] == sorted(expected[tag]), tag
    # float32 in the event file
    np.testing.assert_allclose([e.value for e in events], [expected[tag][e.step] for e in events], rtol=1e-6,
                               err_msg=tag)

  # The recipe as text, once per run; it is the recipe of the run that wrote it.
  texts = acc.Tensors("recipe/text_summary")
  assert [t.step for t in texts] == [0, 4]
  text = texts[-1].tensor_proto.string_val[0].decode()
  assert '"num_train_steps": 6' in text and '"base_features": 4' in text

  # Evaluation overlays (image | ground truth | prediction | overlay) at each evaluation step.
  overlay_tags = [t for t in tags["images"] if t.startswith("eval/overlay/")]
  assert len(overlay_tags) == 2, tags["images"]
  images = acc.Images(overlay_tags[0])
  assert [i.step for i in images] == [2, 4, 6]
  assert images[0].width > 3 * images[0].height  # four panels side by side

  # config.json: the recipe of the last run, which loads back into the same ConfigDict.
  loaded = json.loads((workdir / logs.CONFIG_FILE).read_text())
  assert loaded == json.loads(resumed.to_json_best_effort())
  assert ml_collections.ConfigDict(loaded).model.base_features == 4 and loaded["num_train_steps"] == 6
  assert loaded["dataset"]["crop_size"] == [32, 32]

  # eval.py's run adds its metrics and overlays at the checkpoint's step.
  result = eval_app.run_eval(resumed, str(workdir), split="validation[:8]")
  acc = _read_events(workdir / logs.TENSORBOARD_DIR)
  events = acc.Scalars("eval/validation__8_/mean_iou")  # tensorboardX writes "[:]" in tags as "_"
  assert [e.step for e in events] == [6] and events[0].value == pytest.approx(result["mean_iou"], rel=1e-6)
  assert sum(t.startswith("eval/validation__8_/overlay/") for t in acc.Tags()["images"]) == 2

  # curves.png: loss, learning rate and the five evaluation metrics, 3 panels a row.
  with Image.open(workdir / curves.CURVES_FILE) as png:
    assert png.format == "PNG"
    rows, cols = curves.panel_grid(2 + len(curves.EVAL_KEYS))
    assert png.size == (cols * 500, rows * 350)


def test_curves_command_redraws_and_refuses_an_empty_directory(tmp_path, capsys):
  records = [{"step": s, "loss": 1.0 / s, "learning_rate": 0.1, "time": 0.0} for s in (1, 2, 3)]
  records.append({"step": 3, "eval/mean_iou": 0.5})
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"cut sho')
  assert curves.main(["curves", str(tmp_path)]) == 0
  with Image.open(tmp_path / curves.CURVES_FILE) as png:
    assert png.size == (1500, 350)  # loss, learning rate, mean_iou: one row
  empty = tmp_path / "empty"
  empty.mkdir()
  assert curves.main(["curves", str(empty)]) == 2
  assert "holds no metrics.jsonl records" in capsys.readouterr().err


def test_cli_logging_shows_segjax_info_by_default_and_follows_verbosity(monkeypatch, capsys):
  import logging  # pylint: disable=import-outside-toplevel

  from absl import flags  # pylint: disable=import-outside-toplevel

  from segjax import cli  # pylint: disable=import-outside-toplevel

  own = logging.getLogger("segjax")
  saved = (own.level, own.propagate, list(own.handlers))
  try:
    monkeypatch.setattr(flags.FLAGS["verbosity"], "present", 0)
    cli.configure_logging()
    logging.getLogger("segjax.training.loop").info("Resumed from step %d (somewhere)", 7)
    logging.getLogger("segjax.training.loop").debug("not shown")
    err = capsys.readouterr().err
    assert "Resumed from step 7 (somewhere)\n" in err and "not shown" not in err
    monkeypatch.setattr(flags.FLAGS["verbosity"], "present", 1)  # --verbosity given: segjax follows the root level
    cli.configure_logging()
    assert own.level == logging.NOTSET and sum(isinstance(h, cli._ConsoleHandler) for h in own.handlers) == 1
  finally:
    own.setLevel(saved[0])
    own.propagate = saved[1]
    own.handlers[:] = saved[2]
