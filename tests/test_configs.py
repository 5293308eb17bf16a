"""Every recipe in configs/ imports, validates, honours the common keys and builds its model."""

import importlib.util

import jax
import numpy as np
import pytest

from segjax import config as config_lib
from segjax import models
from segjax.train import setup
from tests.conftest import REPO

RECIPES = sorted((REPO / "configs").glob("*.py"))


def load(path):
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def test_the_readme_recipes_exist():
  assert {"quickstart", "unet_isbi2012", "unet_camvid"} <= {p.stem for p in RECIPES}


def test_every_registry_model_has_a_recipe():
  assert {load(p).model.name for p in RECIPES} == set(models.MODELS)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_builds(path):
  config = load(path)
  config_lib.validate(config)
  config.num_train_steps, config.batch_size, config.seed = 7, 8, 123
  config.dataset.manual_dir = "/some/dir"
  with pytest.raises(AttributeError):  # locked: a misspelt key is an error, not a silent no-op
    config.num_train_step = 7
  exp = setup.build(config)
  state = exp.abstract_state()
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
  assert n_params > 0
  assert state.step.shape == ()


def test_validate_names_key_value_and_fix():
  config = load(REPO / "configs" / "quickstart.py")
  config.model.name = "unet2"
  with pytest.raises(ValueError, match=r"config.model.name='unet2': choose one of \[.*'unet', 'unet_valid'"):
    config_lib.validate(config)
  config = load(REPO / "configs" / "quickstart.py")
  config.loss.class_weights = (1.0, 2.0)
  with pytest.raises(ValueError, match="one weight per class"):
    config_lib.validate(config)
