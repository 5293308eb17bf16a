"""Exponential moving average of the weights (`config.ema`): the average after N steps against a numpy
recomputation from each step's parameters, evaluation and export take it, a checkpoint mid-run resumes bitwise, 1
and 8 devices agree, and checkpoints saved before the EMA field existed still restore with EMA off."""

import functools

import chex
import flax
import jax
import numpy as np
import pytest

from segjax import checkpoint, experiment, sharding
from segjax import state as state_lib
from segjax.data import datasets, pipeline
from segjax.evaluation import semantic
from segjax.training import steps
from tests.conftest import semantic_train_dataset, tiny_config

DECAY = 0.8  # small, so the average moves visibly in a few steps
NUM_STEPS = 4


def _config(data_dir, decay=DECAY, warmup=False):
  return tiny_config(data_dir, **{"ema.decay": decay, "ema.warmup": warmup, "optimizer.warmup_steps": 0})


def _batches(config):
  spec = datasets.get_spec(config.dataset.name)
  source = datasets.data_source(spec.name, "train", data_dir=config.dataset.data_dir)
  return semantic_train_dataset(source, spec=spec, batch_size=config.batch_size,
                                crop_size=config.dataset.crop_size, seed=0)[:NUM_STEPS]


@functools.lru_cache(maxsize=None)
def _setup(data_dir, num_devices):
  config = _config(data_dir)
  exp = experiment.build(config, jax.devices()[:num_devices])
  return exp, steps.jit_train_step(exp), _batches(config)


def _run(exp, step_fn, batches, state, start=0):
  """Steps `start`.. of `batches`; returns the final state and every step's parameters on the host."""
  history = []
  for batch in batches[start:]:
    state, _ = step_fn(state, pipeline.to_global(batch, sharding.batch_sharding(exp.mesh)))
    history.append(jax.device_get(state.params))
  return state, history


@pytest.fixture(scope="module")
def straight(shapes_data_dir):
  exp, step_fn, batches = _setup(shapes_data_dir, 1)
  state = exp.init_state()
  init = jax.device_get(state.params)
  final, history = _run(exp, step_fn, batches, state)
  return init, history, jax.device_get(final)


def test_rate_and_config():
  assert float(state_lib.ema_rate(0.999, False, 5)) == np.float32(0.999)
  # TensorFlow's num_updates warm-up: (1 + t) / (10 + t) until it reaches the decay.
  np.testing.assert_allclose(float(state_lib.ema_rate(0.999, True, 1)), 2 / 11, rtol=1e-6)
  np.testing.assert_allclose(float(state_lib.ema_rate(0.5, True, 100)), 0.5)
  from segjax import config as config_lib  # pylint: disable=import-outside-toplevel
  c = config_lib.default_config()
  assert (c.ema.decay, c.ema.warmup) == (0.0, False)
  assert state_lib.ema_decay(c) == (0.0, False)
  assert state_lib.ema_decay({"model": {}}) == (0.0, False)  # a recipe saved before EMA existed
  c.ema.decay = 1.0
  with pytest.raises(ValueError, match=r"config\.ema\.decay=1\.0"):
    config_lib.validate(c)


def test_average_equals_numpy_recomputation(straight):
  init, history, final = straight
  assert int(final.step) == NUM_STEPS
  ema = jax.tree.map(np.asarray, init)
  rate = np.float32(DECAY)  # in float32, then 1 - rate in float32, as the step computes them
  for params in history:
    ema = jax.tree.map(lambda e, p: rate * e + (np.float32(1) - rate) * p, ema, params)
  # XLA may fuse the multiply-add (FMA): agreement to an ulp or two, not bitwise.
  chex.assert_trees_all_close(final.ema_params, ema, rtol=1e-6, atol=1e-7)
  # And it is a real average: neither the initial nor the last parameters.
  leaf = lambda tree: jax.tree.leaves(tree)[0]  # noqa: E731
  assert not np.allclose(leaf(final.ema_params), leaf(final.params))
  assert not np.allclose(leaf(final.ema_params), leaf(init))


def test_warmup_follows_the_num_updates_rule():
  ema = {"a": np.zeros((3, 2), np.float32), "b": {"c": np.full(4, 2.0, np.float32)}}
  params = jax.tree.map(lambda x: x + 1.0, ema)
  # The first update (count 1): rate min(0.99, 2 / 11), so the average moves 9/11 of the way at once.
  out = state_lib.update_ema(ema, params, state_lib.ema_rate(0.99, True, 1))
  want = jax.tree.map(lambda e, p: np.float32(2 / 11) * e + np.float32(9 / 11) * p, ema, params)
  chex.assert_trees_all_close(out, want, rtol=1e-6, atol=1e-6)
  assert jax.tree.map(lambda x: x.dtype, out) == jax.tree.map(lambda x: x.dtype, ema)


def test_evaluation_prediction_and_export_use_the_average(straight, shapes_data_dir):
  exp, _, _ = _setup(shapes_data_dir, 1)
  _, _, final = straight
  state = jax.device_put(final)
  assert state.eval_params is state.ema_params
  assert experiment.member(exp, state).variables["params"] is state.ema_params
  evaluator = semantic.Evaluator(exp)
  segmenter = evaluator._prepare(state)  # pylint: disable=protected-access
  assert segmenter.members[0].variables["params"] is state.ema_params
  # Without EMA the raw parameters, as before.
  plain = state.replace(ema_params=None)
  assert plain.eval_params is plain.params


def test_checkpoint_mid_run_resumes_bitwise(straight, shapes_data_dir, tmp_path):
  exp, step_fn, batches = _setup(shapes_data_dir, 1)
  _, _, final = straight
  half, _ = _run(exp, step_fn, batches[:2], exp.init_state())
  ckpt = checkpoint.Checkpointer(tmp_path / "ckpt")
  ckpt.save(2, half, exp.config)
  ckpt.close()
  ckpt = checkpoint.Checkpointer(tmp_path / "ckpt")
  restored = ckpt.restore(2, exp.abstract_state())
  ckpt.close()
  assert restored.ema_params is not None
  resumed, _ = _run(exp, step_fn, batches, restored, start=2)
  chex.assert_trees_all_equal(jax.device_get(resumed), final)


def test_8_devices_equal_1(straight, shapes_data_dir):
  assert jax.device_count() == 8
  exp, step_fn, batches = _setup(shapes_data_dir, 8)
  final8, _ = _run(exp, step_fn, batches[:2], exp.init_state())
  exp1, step1, _ = _setup(shapes_data_dir, 1)
  final1, _ = _run(exp1, step1, batches[:2], exp1.init_state())
  chex.assert_trees_all_close(jax.device_get(final8.ema_params), jax.device_get(final1.ema_params), rtol=1e-5,
                              atol=1e-6)


@flax.struct.dataclass
class _StateBeforeEma:
  """TrainState as it was before the EMA field: its checkpoints must restore into today's state, EMA off."""
  step: jax.Array
  params: object
  opt_state: object
  batch_stats: object


def test_checkpoint_without_ema_restores_with_ema_off(shapes_data_dir, tmp_path):
  config = _config(shapes_data_dir, decay=0.0)
  exp = experiment.build(config, jax.devices()[:1])
  assert not exp.ema and exp.abstract_state().ema_params is None
  from tests.conftest import random_state  # pylint: disable=import-outside-toplevel
  state = random_state(exp.abstract_state(), 3).replace(step=np.int32(3))
  old = _StateBeforeEma(step=state.step, params=state.params, opt_state=state.opt_state,
                        batch_stats=state.batch_stats)
  ckpt = checkpoint.Checkpointer(tmp_path / "ckpt")
  ckpt.save(3, old, config)
  ckpt.close()
  ckpt = checkpoint.Checkpointer(tmp_path / "ckpt")
  restored = ckpt.restore(3, exp.abstract_state())
  ckpt.close()
  assert restored.ema_params is None and int(restored.step) == 3
  chex.assert_trees_all_equal(jax.device_get(restored.params), state.params)
  assert restored.eval_params is restored.params


def test_ema_switched_between_runs_is_refused_not_taken_for_damage(shapes_data_dir, tmp_path):
  from tests.conftest import random_checkpoint  # pylint: disable=import-outside-toplevel
  workdir = tmp_path / "run"
  random_checkpoint(_config(shapes_data_dir, decay=0.0), workdir)
  for purpose, set_aside in (("evaluate", False), ("resume", True)):
    ckpt = checkpoint.Checkpointer(workdir)
    exp = experiment.build(_config(shapes_data_dir), jax.devices()[:1])
    with pytest.raises(ValueError, match=r"ema\.decay: 0\.0 in the checkpoint, 0\.8 now"):
      ckpt.restore_newest(exp.abstract_state(), exp.config, purpose, set_aside_damaged=set_aside)
    assert ckpt.all_steps() == [3]  # nothing moved aside
    ckpt.close()


def test_eval_raw_params_scores_the_trained_weights_and_is_refused_without_ema(shapes_data_dir, tmp_path):
  """eval.py --raw_params on an EMA checkpoint scores exactly what an EMA-off checkpoint holding those weights
  scores; the default scores the average the same way; each report in its own folder."""
  from segjax.apps import eval as eval_app  # pylint: disable=import-outside-toplevel
  from tests.conftest import random_checkpoint  # pylint: disable=import-outside-toplevel
  config = tiny_config(shapes_data_dir, **{"ema.decay": DECAY, "mesh.data": 1, "num_visualizations": 0})
  plain = tiny_config(shapes_data_dir, **{"ema.decay": 0.0, "mesh.data": 1, "num_visualizations": 0})
  _, state = random_checkpoint(config, tmp_path / "ema")
  assert state.ema_params is not None  # drawn apart from params by random_state
  for name, params in (("raw", state.params), ("average", state.ema_params)):
    ckpt = checkpoint.Checkpointer(tmp_path / name)
    ckpt.save(int(state.step), state.replace(params=params, ema_params=None), plain)
    ckpt.close()
  split = "test"
  average = eval_app.run_eval(config, str(tmp_path / "ema"), split=split)
  raw = eval_app.run_eval(config, str(tmp_path / "ema"), split=split, raw_params=True)
  want_raw = eval_app.run_eval(plain, str(tmp_path / "raw"), split=split)
  want_average = eval_app.run_eval(plain, str(tmp_path / "average"), split=split)
  iou = lambda r: [row["iou"] for row in r["per_class"]]  # noqa: E731
  assert iou(raw) == iou(want_raw) and iou(average) == iou(want_average)
  assert iou(raw) != iou(average)
  assert raw["raw_params"] and not average["raw_params"]
  assert (tmp_path / "ema" / "eval" / f"{split}_raw" / "metrics.json").is_file()
  assert (tmp_path / "ema" / "eval" / split / "metrics.json").is_file()
  with pytest.raises(ValueError, match="ema.decay=0.*Drop --raw_params"):
    eval_app.run_eval(plain, str(tmp_path / "raw"), split=split, raw_params=True)
