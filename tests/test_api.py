"""The Python API (segjax/__init__.py, segjax/api.py): the README's example runs as written; the predictor segments
like the network applied by hand, in every input form; `import segjax` stays light."""

import importlib.metadata
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
import tomllib

import jax
import numpy as np
import pytest

import segjax
from segjax import api, checkpoint, platform
from segjax import config as config_lib
from segjax.data import datasets
from tests.conftest import REPO, random_checkpoint, tiny_config


def _readme_example() -> str:
  text = (REPO / "README.md").read_text()
  section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
  blocks = re.findall(r"```python\n(.*?)```", section, re.S)
  assert len(blocks) == 1, "the README's Python API section should hold one python example"
  return blocks[0]


def test_readme_example_runs_as_written(shapes_data_dir, tmp_path):
  # As a user runs it from the repository root: configs/ beside it, one CPU device (none of the session's 8 fake
  # ones) and no XLA_FLAGS of the session's, so the example's own XLA settings are what the process gets. tfds
  # finds the session's prepared shapes data through TFDS_DATA_DIR instead of preparing it again.
  (tmp_path / "configs").symlink_to(REPO / "configs")
  code = _readme_example() + "\nimport os\nprint('XLA_FLAGS=' + os.environ.get('XLA_FLAGS', ''))\n"
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(TFDS_DATA_DIR=shapes_data_dir, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
  assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
  lines = run.stdout.strip().splitlines()
  assert lines[-1] == "XLA_FLAGS=" + platform.configure_xla_cpu({}), "the API should set the CLIs' XLA:CPU flags"
  names = datasets.get_spec("shapes").class_names
  last = lines[-2]
  assert last.split()[0] in names and last.endswith("(100, 150) (100, 150, 6) [(100, 150), (60, 80)]"), last
  version, miou = re.fullmatch(r"(\S+) test mIoU (\S+)", lines[-3]).groups()
  assert version == segjax.__version__
  workdir = tmp_path / "runs" / "api"
  saved = json.loads((workdir / "eval" / "test" / "metrics.json").read_text())
  assert saved["split"] == "test" and saved["checkpoint_step"] == 20 and f"{saved['mean_iou']:.3f}" == miou
  assert checkpoint.Checkpointer(workdir).all_steps() == [20]


def test_version_is_the_installed_distributions():
  pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
  assert segjax.__version__ == importlib.metadata.version("segjax") == pyproject["project"]["version"]


_LIGHT = textwrap.dedent("""
    import sys
    import segjax
    assert segjax.__version__, "no version"
    assert "jax" not in sys.modules, "import segjax imported jax"
    from segjax import serving
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("flax", "optax", "orbax", "tensorflow_datasets",
                                                                 "grain") or m.startswith(("segjax.training",
                                                                 "segjax.api", "segjax.experiment", "segjax.data")))
    assert not heavy, f"from segjax import serving imported {heavy}"
    assert callable(segjax.train) and callable(segjax.evaluate) and callable(segjax.load)
    from jax._src import xla_bridge
    assert not xla_bridge.backends_are_initialized(), "importing segjax.api started JAX: too late for XLA_FLAGS"
    print("ok")
""")


def test_import_segjax_is_light_and_the_api_is_lazy():
  env = dict(os.environ, PYTHONPATH=str(REPO))
  run = subprocess.run([sys.executable, "-c", _LIGHT], env=env, capture_output=True, text=True, timeout=120)
  assert run.stdout.strip() == "ok", run.stderr[-3000:]
  with pytest.raises(AttributeError, match="no attribute 'trian'"):
    segjax.trian  # pylint: disable=pointless-statement


def test_a_late_call_warns_that_xla_flags_cannot_apply(monkeypatch, caplog):
  jax.devices()  # this process's backend has started
  devices = "--xla_force_host_platform_device_count=8"
  monkeypatch.setenv("XLA_FLAGS", devices)
  with caplog.at_level(logging.WARNING, logger="segjax.api"):
    api._configure_xla()  # pylint: disable=protected-access
  assert "JAX started before segjax was called" in caplog.text
  assert os.environ["XLA_FLAGS"] == platform.configure_xla_cpu({"XLA_FLAGS": devices})


@pytest.mark.parametrize("recipe", sorted(p.name for p in (REPO / "configs").glob("*.py")))
def test_every_recipe_survives_the_checkpoints_json(recipe):
  config = config_lib.load_recipe(str(REPO / "configs" / recipe))
  rebuilt = api.recipe_from_dict(json.loads(json.dumps(config.to_dict())))
  assert rebuilt.to_dict() == config.to_dict()  # tuples stay tuples (a list != a tuple in this comparison)
  assert rebuilt.is_locked


def test_overrides_change_a_copy_and_refuse_unknown_keys():
  config = config_lib.load_recipe(str(REPO / "configs" / "quickstart.py"))
  recipe = api._recipe  # pylint: disable=protected-access
  changed = recipe(config, dict(num_train_steps=7, optimizer=dict(learning_rate=0.5)))
  assert (changed.num_train_steps, changed.optimizer.learning_rate, changed.optimizer.name) == (7, 0.5, "adamw")
  assert (config.num_train_steps, config.optimizer.learning_rate) == (1800, 3e-3)
  with pytest.raises(ValueError, match="no key 'num_steps'"):
    recipe(config, dict(num_steps=7))


# ---------------------------------------------------------------------------------------------------- predictor

MEAN, STD = (100.0, 110.0, 120.0), (50.0, 60.0, 70.0)


@pytest.fixture(scope="module")
def trained(shapes_data_dir, tmp_path_factory):
  """A checkpoint of random parameters whose recipe differs from the defaults in what the predictor must take
  from it: normalisation and test-time flips."""
  config = tiny_config(shapes_data_dir, **{"mesh.data": 1, "dataset.mean": MEAN, "dataset.std": STD,
                                           "inference.hflip": True})
  workdir = tmp_path_factory.mktemp("trained")
  exp, state = random_checkpoint(config, workdir)
  return config, str(workdir), exp, state


def _reference_probs(exp, state, image):
  """Softmax of the U-Net applied by hand, averaged with its horizontally flipped view: normalised with MEAN/STD,
  zero-padded bottom/right to a multiple of 2**depth (the U-Net pools `depth` times), cropped back."""
  h, w = image.shape[:2]
  d = 2 ** exp.config.model.depth
  variables = {"params": state.params, "batch_stats": state.batch_stats}

  def probs(x):
    x = (x.astype(np.float32) - np.float32(MEAN)) / np.float32(STD)
    x = np.pad(x, ((0, -h % d), (0, -w % d), (0, 0)))
    logits = np.asarray(exp.model.apply(variables, x[None], train=False))[0, :h, :w]
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)

  return (probs(image) + probs(image[:, ::-1])[:, ::-1]) / 2


def test_the_predictor_takes_everything_from_the_checkpoint(trained):
  config, workdir, exp, state = trained
  predictor = segjax.load(workdir)
  spec = datasets.get_spec(config.dataset)
  assert predictor.class_names == spec.class_names and predictor.num_classes == 6 == len(predictor.palette)
  assert predictor.palette == spec.palette and predictor.step == 3
  assert predictor.normalization == ("mean_std", MEAN, STD)
  assert predictor.inference.hflip and predictor.inference.mode == "whole"
  image = np.random.default_rng(0).integers(0, 256, (37, 45, 3), dtype=np.uint8)  # not a multiple of 4
  expected = _reference_probs(exp, state, image)
  probs = predictor.probabilities(image)
  assert probs.shape == (37, 45, 6) and probs.dtype == np.float32
  np.testing.assert_allclose(probs, expected, atol=1e-5)
  labels = predictor(image)
  assert labels.shape == (37, 45) and labels.dtype == np.uint8
  np.testing.assert_array_equal(labels, expected.argmax(-1))


def test_batches_lists_and_grey_images_equal_one_by_one(trained):
  predictor = segjax.load(trained[1])
  rng = np.random.default_rng(1)
  batch = rng.integers(0, 256, (3, 20, 28, 3), dtype=np.uint8)
  one_by_one = np.stack([predictor(x) for x in batch])
  np.testing.assert_array_equal(predictor(batch), one_by_one)
  np.testing.assert_allclose(predictor.probabilities(batch), np.stack([predictor.probabilities(x) for x in batch]),
                             atol=1e-5)
  predictor.batch_size = 2  # two calls, the second padded with a blank image
  np.testing.assert_array_equal(predictor(batch), one_by_one)
  images = [rng.integers(0, 256, size, dtype=np.uint8) for size in ((17, 23, 3), (40, 9, 3), (8, 8, 3))]
  out = predictor(images)
  assert isinstance(out, list) and [o.shape for o in out] == [(17, 23), (40, 9), (8, 8)]
  for o, x in zip(out, images):
    np.testing.assert_array_equal(o, predictor(x))
  grey = rng.integers(0, 256, (16, 16), dtype=np.uint8)
  np.testing.assert_array_equal(predictor(grey), predictor(np.repeat(grey[..., None], 3, -1)))
  np.testing.assert_array_equal(predictor(batch.astype(np.float32)), one_by_one)  # 0..255 floats too
  assert predictor(np.zeros((0, 8, 8, 3), np.uint8)).shape == (0, 8, 8)
  for bad, match in ((np.zeros((8, 8, 4), np.uint8), "4 channels"), (np.zeros((1, 1, 8, 8, 3)), "shape"),
                     (np.zeros((0, 8, 3)), "shape")):
    with pytest.raises(ValueError, match=match):
      predictor(bad)


def test_inference_overrides_and_the_streamed_slide_mode(trained):
  predictor = segjax.load(trained[1], 3, inference_overrides=dict(mode="slide", tile_size=(16, 16), hflip=False))
  assert (predictor.inference.mode, predictor.inference.tile_size, predictor.inference.hflip) == ("slide", (16, 16),
                                                                                                   False)
  image = np.random.default_rng(2).integers(0, 256, (30, 41, 3), dtype=np.uint8)
  probs = predictor.probabilities(image)
  np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
  np.testing.assert_array_equal(predictor(image), probs.argmax(-1))  # the streamed labels = the scores' argmax
  np.testing.assert_array_equal(predictor(image[None])[0], predictor(image))
  with pytest.raises(ValueError, match="available steps: \\[3\\]"):
    segjax.load(trained[1], 5)


def test_evaluate_with_the_checkpoints_own_recipe(trained):
  config, workdir, _, _ = trained
  result = segjax.evaluate(None, workdir, split="test[:8]")
  again = segjax.evaluate(config, workdir, split="test[:8]")
  assert result["split"] == "test[:8]" and result["checkpoint_step"] == 3 and result["num_images"] == 8
  assert result["inference"]["hflip"] and result["mean_iou"] == again["mean_iou"]


def test_train_takes_a_recipe_file_and_overrides(shapes_data_dir, tmp_path):
  recipe = tmp_path / "tiny.py"
  recipe.write_text(f"from tests.conftest import tiny_config\n\n\ndef get_config():\n"
                    f"  return tiny_config({shapes_data_dir!r}, **{{'mesh.data': 1}})\n")
  state = segjax.train(str(recipe), tmp_path / "run", progress=False, num_train_steps=2, checkpoint_every_steps=1)
  assert int(state.step) == 2
  assert checkpoint.Checkpointer(tmp_path / "run").all_steps() == [1, 2]
  assert segjax.load(tmp_path / "run", 1).step == 1


def test_a_checkpoint_without_its_recipe_falls_back_to_config_json(shapes_data_dir, tmp_path, caplog):
  from segjax.training import logs  # pylint: disable=import-outside-toplevel

  config = tiny_config(shapes_data_dir, **{"mesh.data": 1, "dataset.mean": MEAN})
  _, state = random_checkpoint(config, tmp_path / "a")
  ckpt = checkpoint.Checkpointer(tmp_path / "b")
  ckpt.save(3, state)  # no recipe item
  ckpt.close()
  with pytest.raises(ValueError, match="holds no readable recipe"):
    segjax.load(tmp_path / "b")
  logs.write_config(tmp_path / "b", config)
  with caplog.at_level(logging.WARNING, logger="segjax.api"):
    predictor = segjax.load(tmp_path / "b")
  assert "config.json" in caplog.text and predictor.normalization.mean == MEAN
  image = np.random.default_rng(3).integers(0, 256, (12, 20, 3), dtype=np.uint8)
  np.testing.assert_array_equal(predictor(image), segjax.load(tmp_path / "a")(image))


def test_load_refuses_an_instance_checkpoint_naming_what_serves_it(instance_data_dir, tmp_path):
  config = config_lib.load_recipe(str(REPO / "tests" / "tasks" / "instance_recipe.py"))
  config.dataset.data_dir = instance_data_dir
  random_checkpoint(config, tmp_path)
  with pytest.raises(ValueError, match="predict_instance.run.*segjax.serving.load"):
    api.load(tmp_path)


def test_load_refuses_a_panoptic_checkpoint_and_its_saved_recipe_reads_back(panoptic_data_dir, tmp_path):
  config = config_lib.load_recipe(str(REPO / "tests" / "tasks" / "panoptic_recipe.py"))
  config.dataset.data_dir = panoptic_data_dir
  random_checkpoint(config, tmp_path)
  with pytest.raises(ValueError, match="panoptic.*predict_panoptic"):
    api.load(tmp_path)
  # The saved recipe comes back with Panoptic FPN's model block (its semantic keys), not a semantic model's.
  saved = api.recipe_from_dict(config.to_dict())
  assert saved.task == "panoptic" and saved.model.semantic_conv_dims == 16 and saved.model.backbone == "small"
