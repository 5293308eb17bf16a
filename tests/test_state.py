"""segjax.state.make_optimizer with frozen parameters: they never move (no update, no weight decay, no momentum),
and the trainable ones move exactly as the same optimiser over the trainable parameters alone moves them."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from segjax import state as state_lib


def _opt(name):
  return types.SimpleNamespace(name=name, learning_rate=0.1, schedule="constant", warmup_steps=0, weight_decay=0.1,
                               momentum=0.9, poly_power=0.9, grad_clip_norm=1.0)


@pytest.mark.parametrize("name", ["sgd", "adamw", "adam"])
def test_frozen_parameters_stay_and_the_others_follow_the_plain_optimiser(name):
  rng = np.random.default_rng(0)
  params = {"stem": {"kernel": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32),
                     "scale": jnp.asarray(rng.normal(size=(4,)), jnp.float32)},
            "head": {"kernel": jnp.asarray(rng.normal(size=(4, 2)), jnp.float32),
                     "bias": jnp.asarray(rng.normal(size=(2,)), jnp.float32)}}
  trainable = lambda p: {"stem": jax.tree.map(lambda _: False, p["stem"]), "head": jax.tree.map(lambda _: True, p["head"])}
  opt = _opt(name)
  schedule = state_lib.make_schedule(opt, 10)
  tx = state_lib.make_optimizer(opt, schedule, trainable=trainable)
  plain = state_lib.make_optimizer(opt, schedule)  # the reference: the same optimiser on the head alone
  s = state_lib.TrainState.create(params=params, tx=tx)
  head, head_opt = params["head"], plain.init(params["head"])
  for step in range(3):
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32) * (step + 1), params)
    s = s.apply_gradients(tx, grads)
    updates, head_opt = plain.update(grads["head"], head_opt, head)
    head = optax.apply_updates(head, updates)
  for a, b in zip(jax.tree.leaves(s.params["stem"]), jax.tree.leaves(params["stem"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  for a, b in zip(jax.tree.leaves(s.params["head"]), jax.tree.leaves(head)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
  assert not np.allclose(np.asarray(s.params["head"]["kernel"]), np.asarray(params["head"]["kernel"]))


def test_step_schedule_is_detectron2s_warmup_then_multistep():
  # Detectron2 / torchvision 1x: linear warm-up over 1000 steps (here from 0), x0.1 at steps 60000 and 80000.
  opt = types.SimpleNamespace(learning_rate=0.02, schedule="step", warmup_steps=1000, boundaries=(60000, 80000),
                              decay_factor=0.1, poly_power=0.9)
  schedule = state_lib.make_schedule(opt, 90000)

  def reference(t):  # written from the definition
    if t < 1000:
      return 0.02 * t / 1000
    return 0.02 * 0.1 ** sum(t >= b for b in (60000, 80000))
  for t in (0, 1, 500, 999, 1000, 1001, 59999, 60000, 60001, 79999, 80000, 89999):
    np.testing.assert_allclose(float(schedule(t)), reference(t), rtol=1e-4, err_msg=str(t))  # float32
