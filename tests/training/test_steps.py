"""Training: one step on 8 devices equals one on 1 device; eval refuses a missing workdir.

Kill/restart through the real train.py (SIGKILL, SIGTERM) and the eval.py CLI: tests/training/test_preemption.py.
"""

import chex
import jax
import numpy as np
import pytest

from segjax import sharding
from segjax.data import augment, datasets, pipeline
from segjax import experiment
from segjax.training import steps
from tests.conftest import semantic_train_dataset, tiny_config


FULL_AUGMENT = dict(zoom=(0.7, 1.5), hflip_prob=0.5, vflip_prob=0.5, rotate_degrees=20.0, affine_scale=(0.9, 1.1),
                    affine_translate=0.1, affine_shear_degrees=5.0, elastic_sigma=2.0, brightness=0.1,
                    contrast=0.2, gamma=(0.8, 1.25), blur_sigma=(0.3, 1.0), blur_prob=0.5, noise_std=(0.0, 5.0),
                    noise_prob=0.5, pixel_dropout=0.02, pixel_dropout_prob=0.5, coarse_dropout_holes=2,
                    coarse_dropout_prob=0.5)


def _first_batch(config):
  spec = datasets.get_spec(config.dataset.name)
  source = datasets.data_source(spec.name, "train", data_dir=config.dataset.data_dir)
  return semantic_train_dataset(source, spec=spec, batch_size=config.batch_size,
                                crop_size=config.dataset.crop_size, seed=0)[0]


def _one_step(config, devices, batch):
  config.loss.ce_weight, config.loss.dice_weight = 1.0, 0.5
  config.loss.class_weights = (1.0, 2.0, 1.0, 1.0, 3.0, 1.0)
  exp = experiment.build(config, devices)
  state = exp.init_state()
  fn = steps.jit_train_step(exp)
  new_state, out = fn(state, pipeline.to_global(batch, sharding.batch_sharding(exp.mesh)))
  return jax.device_get(new_state.params), jax.device_get(new_state.batch_stats), jax.device_get(out)


def test_one_step_on_8_devices_equals_1_device(shapes_data_dir):
  assert jax.device_count() == 8
  # Dropout and every augmentation on, so the per-step and per-example keys must give the same masks and
  # transforms however the batch is split.
  config = tiny_config(shapes_data_dir, **{"model.dropout_rate": 0.3, "optimizer.warmup_steps": 0,
                                           "augment": augment.config_block(**FULL_AUGMENT)})
  batch = _first_batch(config)
  p1, s1, m1 = _one_step(config, jax.devices()[:1], batch)
  p8, s8, m8 = _one_step(config, jax.devices(), batch)
  np.testing.assert_allclose(m1["loss"], m8["loss"], rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(p1, p8, rtol=1e-5, atol=1e-5)
  # BatchNorm statistics are over the global batch, not per device.
  chex.assert_trees_all_close(s1, s8, rtol=1e-5, atol=1e-5)
  init = jax.device_get(experiment.build(config).init_state().params)
  assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(init), jax.tree.leaves(p1)))


def test_eval_refuses_missing_workdir(tmp_path, shapes_data_dir):
  from segjax.apps import eval as eval_app  # pylint: disable=import-outside-toplevel
  with pytest.raises(FileNotFoundError, match="train first"):
    eval_app.run_eval(tiny_config(shapes_data_dir), str(tmp_path / "nothing"))
