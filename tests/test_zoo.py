"""Every registry entry: builds from its config block, keeps its parameter shapes across input sizes, returns
logits of the input's size (valid-conv nets: their documented output size) and trains one step on 8 devices.

The published widths of the VGG/ResNet nets (up to 252 M parameters) replicated over 8 simulated CPU devices
with Adam states would need tens of GiB, so the step test uses each model's width options at a small setting;
the published sizes are covered by the parameter-count tests of each family's test file (jax.eval_shape).
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from segjax import models, sharding
from segjax.train import state as state_lib
from segjax.train import steps

# Constructor options that make one step cheap on CPU. Every registry entry must be listed.
SMALL: dict[str, dict] = {
    "unet": dict(depth=2, base_features=8),
}
# Input sizes (height, width) checked for every model; valid-conv nets map each to their next valid input.
SIZES = [(32, 32), (64, 96)]
NUM_CLASSES = 5


def test_every_model_has_a_small_setting():
  assert set(SMALL) == set(models.MODELS)


def _input_size(model, h, w):
  if models.is_valid_conv(model):
    return model.input_size_for(h), model.input_size_for(w)
  d = models.size_divisor(model)
  m = models.init_size(model)
  return max(-(-h // d) * d, m), max(-(-w // d) * d, m)


def _build(name):
  return models.build_model(name, NUM_CLASSES, **SMALL[name])


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_config_block_round_trips(name):
  block = models.model_config(name, **SMALL[name])
  model = models.build_model(name, NUM_CLASSES, **models.model_kwargs(block))
  assert model == _build(name)


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_shapes_over_input_sizes(name):
  model = _build(name)
  param_shapes = []
  for h, w in SIZES:
    h, w = _input_size(model, h, w)
    x = jax.ShapeDtypeStruct((2, h, w, 3), jnp.float32)
    variables = jax.eval_shape(functools.partial(model.init, train=False),
                               {"params": jax.random.key(0), "dropout": jax.random.key(1)}, x)
    logits = jax.eval_shape(functools.partial(model.apply, train=False), variables, x)
    expected = (2, models.output_size(model, h), models.output_size(model, w), NUM_CLASSES)
    assert logits.shape == expected and logits.dtype == jnp.float32, (name, h, w)
    param_shapes.append(jax.tree.map(lambda a: a.shape, variables["params"]))
  assert all(p == param_shapes[0] for p in param_shapes)


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_one_train_step_on_8_devices(name):
  assert jax.device_count() == 8
  model = _build(name)
  h, w = _input_size(model, 32, 48)
  mesh = sharding.make_mesh(8)
  tx = optax.adam(1e-3)
  state = jax.jit(functools.partial(state_lib.create_train_state, model, tx, input_shape=(1, h, w, 3)),
                  out_shardings=sharding.replicated(mesh))(jax.random.key(0))
  rng = np.random.default_rng(0)
  batch = {"image": rng.integers(0, 256, (8, h, w, 3), dtype=np.uint8),
           "label": rng.integers(0, NUM_CLASSES, (8, h, w)).astype(np.int32),
           "weight": np.ones((8, h, w), np.float32)}
  batch = jax.device_put(batch, sharding.batch_sharding(mesh))
  before = jax.tree.map(np.asarray, state.params)
  step = steps.jit_train_step(mesh, model=model, seed=0, mean=(127.5,), std=(127.5,), ce_weight=1.0,
                              dice_weight=0.0, class_weights=None)
  new_state, out = step(state, batch)
  assert np.isfinite(float(out["loss"])) and float(out["grad_norm"]) > 0
  assert int(new_state.step) == 1
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, np.asarray(b)), before, new_state.params)
  assert any(jax.tree.leaves(changed))
  chex.assert_trees_all_equal_shapes(before, new_state.params)
