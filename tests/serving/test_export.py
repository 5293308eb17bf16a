"""Export (jax.export, serialized StableHLO) and the serving loader that needs none of segjax's training code.

A checkpoint of a tiny U-Net is exported for cpu and cuda; a fresh Python process loads it with segjax.serving
only (flax, optax, orbax and segjax.training stay unimported there) and its labels equal the in-process segjax path's
(steps.predict + argmax) exactly, its probabilities to float rounding, at two batch sizes and two image sizes.
"""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

pytest.importorskip("flatbuffers", reason="jax.export serialization needs the flatbuffers package")

from segjax import forward, models, serving  # noqa: E402
from segjax.serving import export  # noqa: E402
from segjax.data import datasets  # noqa: E402
from segjax.training import steps  # noqa: E402
from tests.conftest import REPO, predict_logits, random_checkpoint, random_state, tiny_config  # noqa: E402

# (batch, height, width): the tiny U-Net (depth 2) takes multiples of 4; one artifact serves all of them.
SHAPES = ((3, 16, 24), (1, 8, 12))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A checkpoint (step 3) of a tiny U-Net with BatchNorm, parameters and statistics as after training."""
  # Nothing here reads the dataset (only its spec: classes, channels), so its data_dir need not be prepared.
  config = tiny_config(str(tmp_path_factory.mktemp("unprepared_tfds")))
  workdir = tmp_path_factory.mktemp("export_run")
  exp, state = random_checkpoint(config, workdir, seed=0, step=3)
  return config, workdir, exp, state


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
  """The checkpoint exported for cpu and cuda (serialization for cuda needs no GPU)."""
  config, workdir, _, _ = trained
  return export.export_checkpoint(config, workdir, tmp_path_factory.mktemp("exported"), platforms=("cpu", "cuda"),
                                  recipe="quickstart (tiny)")


def _reference(exp, state, images):
  """The in-process segjax path: steps.predict + argmax / softmax (jitted: faster than eager on CPU)."""
  logits = jax.jit(lambda x: predict_logits(state, x, model=exp.model, mean=exp.mean, std=exp.std,
                                           normalization=exp.normalization))(images)
  return np.asarray(jax.numpy.argmax(logits, -1)), np.asarray(jax.nn.softmax(logits, -1))


def test_exported_model_runs_without_segjax_training_code(trained, exported, tmp_path):
  _, _, exp, state = trained
  out = exported
  meta = json.loads((out / "model.json").read_text())
  assert meta["format_version"] == serving.FORMAT_VERSION and meta["platforms"] == ["cpu", "cuda"]
  assert meta["class_names"] == list(exp.spec.class_names) and meta["input"]["channels"] == 3
  assert meta["input"]["height"] == {"multiple_of": 4, "min": 4} and meta["recipe"]["checkpoint_step"] == 3
  # Parameters are baked in: the file holds at least their bytes.
  assert (out / "model.jaxexport").stat().st_size >= meta["parameters"]["bytes"] > 0

  rng = np.random.default_rng(0)
  images = [rng.integers(0, 256, (b, h, w, 3), dtype=np.uint8) for b, h, w in SHAPES]
  for i, x in enumerate(images):
    np.save(tmp_path / f"images{i}.npy", x)
  script = textwrap.dedent(f"""
      import sys
      import numpy as np
      from segjax import serving
      model = serving.load({str(out)!r})
      assert model.class_names[0] == {exp.spec.class_names[0]!r}, model.class_names
      for i in range({len(images)}):
        result = model(np.load({str(tmp_path)!r} + f"/images{{i}}.npy"))
        np.save({str(tmp_path)!r} + f"/labels{{i}}.npy", result["labels"])
        np.save({str(tmp_path)!r} + f"/probs{{i}}.npy", result["probs"])
      loaded = [m for m in sys.modules if m.split(".")[0] in ("flax", "optax", "orbax", "tensorflow", "grain",
                                                               "tensorflow_datasets")
                or m.startswith(("segjax.training", "segjax.models", "segjax.data"))]
      assert not loaded, f"serving imported {{loaded}}"
      """)
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
  proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]

  classes = set()
  for i, x in enumerate(images):
    labels, probs = _reference(exp, state, x)
    got_labels, got_probs = np.load(tmp_path / f"labels{i}.npy"), np.load(tmp_path / f"probs{i}.npy")
    assert got_labels.dtype == np.int32 and got_labels.shape == x.shape[:3]
    np.testing.assert_array_equal(got_labels, labels)
    np.testing.assert_allclose(got_probs, probs, rtol=1e-5, atol=1e-6)
    classes |= set(np.unique(labels).tolist())
  assert len(classes) > 1  # a constant prediction would make the comparison weak


def test_input_errors_name_expected_got_and_fix(exported):
  model = serving.load(exported)
  with pytest.raises(ValueError, match=r"height 10 .*multiple of 4.*pad the images to height 12 or crop to 8"):
    model(np.zeros((1, 10, 8, 3), np.uint8))
  with pytest.raises(ValueError, match=r"expects images with 3 channels, got 1 .*np\.repeat"):
    model(np.zeros((1, 8, 8, 1), np.uint8))
  with pytest.raises(ValueError, match=r"takes uint8 images .*got dtype float32"):
    model(np.zeros((1, 8, 8, 3), np.float32))
  with pytest.raises(ValueError, match=r"batch \[B, H, W, 3\], got shape \(8, 8, 3\) \(one image: images\[None\]\)"):
    model(np.zeros((8, 8, 3), np.uint8))


def test_unknown_format_version_and_missing_files_are_refused(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"model\.json is missing"):
    serving.load(tmp_path)
  meta = {"format": serving.FORMAT, "format_version": serving.FORMAT_VERSION + 1}
  (tmp_path / "model.json").write_text(json.dumps(meta))
  with pytest.raises(ValueError, match=rf"{tmp_path}/model\.json has format_version 2.*upgrade segjax"):
    serving.load(tmp_path)
  (tmp_path / "model.json").write_text(json.dumps(dict(meta, format_version=serving.FORMAT_VERSION)))
  with pytest.raises(FileNotFoundError, match=r"model\.jaxexport is missing"):
    serving.load(tmp_path)


def test_valid_conv_net_exports_fixed_sizes_with_per_image_normalization(tmp_path):
  """The original U-Net (valid convolutions) pads by its margin in Python: fixed sizes only, and its per-image
  standardisation inside the export equals the training path's."""
  spec = datasets.get_spec("shapes")
  model = models.build_model("unet_valid", spec.num_classes, depth=1, base_features=4, dropout_rate=0.0)
  side = models.init_size(model)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, side, side, 3)), train=False))
  variables = {"params": random_state(shapes["params"], seed=1), "batch_stats": {}}
  with pytest.raises(ValueError, match=r"valid-convolution net.*Pass --height"):
    export.export_model(model, variables, spec, tmp_path, normalization="per_image")
  loaded = serving.load(export.export_model(model, variables, spec, tmp_path, height=12, width=10,
                                            normalization="per_image", outputs=("labels", "logits")))
  x = np.random.default_rng(1).integers(0, 256, (2, 12, 10, 3), dtype=np.uint8)
  x[1] = 7  # a constant image: standard deviation 0, which only the floor keeps from giving 0 / 0
  state = type("State", (), variables)
  logits = predict_logits(state, x, model=model, mean=(0.0,), std=(1.0,), normalization="per_image")
  got = loaded(x)
  assert set(got) == {"labels", "logits"}
  np.testing.assert_array_equal(got["labels"], np.argmax(logits, -1))
  np.testing.assert_allclose(got["logits"], logits, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match=r"height 16 .*expects height exactly 12.*re-export with --height=16"):
    loaded(np.zeros((1, 16, 10, 3), np.uint8))


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is not None, reason="TensorFlow is installed")
def test_saved_model_without_tensorflow_names_the_extra(trained, tmp_path):
  config, workdir, _, _ = trained
  with pytest.raises(ImportError, match=r"pip install 'segjax\[tf\]'"):
    export.export_saved_model(config, workdir, tmp_path)


def test_saved_model_matches_segjax(trained, tmp_path):
  tf = pytest.importorskip("tensorflow")
  config, workdir, exp, state = trained
  loaded = tf.saved_model.load(str(export.export_saved_model(config, workdir, tmp_path / "saved_model")))
  serve = loaded.signatures["serving_default"]
  for b, h, w in SHAPES:
    x = np.random.default_rng(b).integers(0, 256, (b, h, w, 3), dtype=np.uint8)
    got = serve(images=tf.constant(x))
    labels, probs = _reference(exp, state, x)
    np.testing.assert_array_equal(got["labels"].numpy(), labels)
    np.testing.assert_allclose(got["probs"].numpy(), probs, rtol=1e-5, atol=1e-6)


def test_export_cli_beside_the_other_clis(trained, tmp_path):
  """export.py (at the repository root, as train.py, eval.py and predict.py) writes what export_checkpoint does."""
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel

  config, workdir, _, _ = trained
  flags = [f"--config.dataset.data_dir={config.dataset.data_dir}", "--config.model.depth=2",
           "--config.model.base_features=4"]
  out = subprocess.run([sys.executable, str(REPO / "export.py"), f"--config={REPO / 'configs/quickstart.py'}",
                        f"--workdir={workdir}", f"--out={tmp_path / 'cli'}", "--batch=2", *flags],
                       cwd=REPO, capture_output=True, text=True, timeout=600,
                       env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
  assert out.returncode == 0, out.stderr[-3000:]
  assert "Wrote" in out.stdout and "checkpoint step 3" in out.stdout, out.stdout
  meta = serving.read_meta(tmp_path / "cli")
  assert meta["recipe"]["checkpoint_step"] == 3 and meta["input"]["shape"][0] == "2"  # dims as text: symbolic ones are names
