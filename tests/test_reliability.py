"""Reliability: non-finite updates are never applied, incompatible checkpoints are refused.

SIGTERM (save the current step, exit 0, resume exactly) is tested with the SIGKILL restarts in test_preemption.py.
"""

import json
import pathlib

import jax
import numpy as np
import pytest

from segjax import evaluate, sharding
from segjax.data import datasets, pipeline
from segjax.train import checkpoint as checkpoint_lib
from segjax.train import loop, setup, steps
from tests.conftest import tiny_config


def _finite(tree) -> bool:
  return all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(jax.device_get(tree)))


def test_nonfinite_update_is_not_applied(shapes_data_dir):
  config = tiny_config(shapes_data_dir)
  exp = setup.build(config)
  state = exp.init_state()
  source = datasets.data_source(config.dataset, "train")
  batch = pipeline.train_dataset(source, spec=exp.spec, batch_size=8, crop_size=(32, 32), seed=0)[0]
  fn = steps.jit_train_step(exp.mesh, model=exp.model, seed=0, mean=exp.mean, std=exp.std, ce_weight=1.0,
                            dice_weight=1.0, class_weights=None)
  before = jax.device_get(state)
  poisoned = dict(batch, weight=np.where(np.arange(32)[None, None, :] == 3, np.nan, batch["weight"]).astype(
      np.float32))
  state, out = fn(state, pipeline.to_global(poisoned, sharding.batch_sharding(exp.mesh)))
  after = jax.device_get(state)
  assert not bool(out["finite"]) and not np.isfinite(float(out["loss"]))
  assert int(after.step) == 1  # the data moves on
  for name in ("params", "opt_state", "batch_stats"):
    for a, b in zip(jax.tree.leaves(getattr(before, name)), jax.tree.leaves(getattr(after, name))):
      np.testing.assert_array_equal(a, b)
  # A clean batch afterwards trains normally.
  state, out = fn(state, pipeline.to_global(batch, sharding.batch_sharding(exp.mesh)))
  assert bool(out["finite"]) and int(state.step) == 2


def _diverging(shapes_data_dir, **overrides):
  # An absurd learning rate overflows the weights within a few steps.
  return tiny_config(shapes_data_dir, num_train_steps=12, checkpoint_every_steps=1, keep_checkpoints=20,
                     log_every_steps=1, **{"optimizer.learning_rate": 1e30, "optimizer.warmup_steps": 0,
                                           **overrides})


def test_nonfinite_stop_names_the_step_and_keeps_checkpoints(shapes_data_dir, tmp_path):
  with pytest.raises(FloatingPointError, match=r"Step (\d+): the loss or the gradients are not finite") as info:
    loop.train_and_evaluate(_diverging(shapes_data_dir), tmp_path, progress=False)
  bad = int(info.value.args[0].split()[1].rstrip(":"))
  assert "on_nonfinite=skip" in str(info.value)
  ckpt = checkpoint_lib.Checkpointer(tmp_path)
  saved = ckpt.all_steps()
  assert saved and max(saved) <= bad + 1  # at most the step launched before the flag was read
  exp = setup.build(_diverging(shapes_data_dir))
  for step in saved:  # every checkpoint restores and holds finite numbers: no bad update was ever applied
    assert _finite(ckpt.restore(step, exp.abstract_state()).params)


def test_nonfinite_skip_goes_on_and_counts(shapes_data_dir, tmp_path):
  state = loop.train_and_evaluate(_diverging(shapes_data_dir, on_nonfinite="skip"), tmp_path, progress=False)
  assert int(state.step) == 12 and _finite(state.params)
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert records[-1]["skipped_nonfinite_steps"] > 0


def test_incompatible_checkpoint_is_refused_saying_what_differs(shapes_data_dir, tmp_path):
  config = tiny_config(shapes_data_dir, num_train_steps=2)
  loop.train_and_evaluate(config, tmp_path, progress=False)
  wider = tiny_config(shapes_data_dir, num_train_steps=4, **{"model.base_features": 8})
  with pytest.raises(ValueError, match=r"Cannot resume training from .* step 2.*model\.base_features: 4 in the "
                                       r"checkpoint, 8 now"):
    loop.train_and_evaluate(wider, tmp_path, progress=False)
  deeper = tiny_config(shapes_data_dir, **{"model.depth": 3})
  with pytest.raises(ValueError, match=r"Cannot evaluate .*model\.depth: 2 in the checkpoint, 3 now"):
    evaluate.run_eval(deeper, str(tmp_path), split="test")
  # More steps, another schedule: allowed.
  longer = tiny_config(shapes_data_dir, num_train_steps=3, **{"optimizer.learning_rate": 1e-4})
  assert int(loop.train_and_evaluate(longer, tmp_path, progress=False).step) == 3


class _SavedRecipe:
  directory = pathlib.Path("/runs/x/checkpoints")

  def __init__(self, recipe):
    self.recipe = recipe

  def restore_config(self, step):
    del step
    return self.recipe


def test_class_list_and_channel_differences_are_named(shapes_data_dir):
  config = tiny_config(shapes_data_dir)
  saved = json.loads(json.dumps(config.to_dict()))
  saved["dataset"]["name"] = "isbi2012"
  with pytest.raises(ValueError, match=r"classes: 2 \['membrane', 'cell'\] in the checkpoint \(isbi2012\), 6 "
                                       r"\['background'.*image channels: 1 in the checkpoint, 3 now"):
    checkpoint_lib.check_compatible(_SavedRecipe(saved), 7, config, "evaluate")
  checkpoint_lib.check_compatible(_SavedRecipe(json.loads(json.dumps(config.to_dict()))), 7, config, "evaluate")


def test_stop_at_an_evaluation_step_still_evaluates_it(shapes_data_dir, tmp_path, monkeypatch):
  """SIGTERM at a step that is due an evaluation: the resumed run starts after it, so the stop must evaluate it.

  The multi-process test stops wherever SIGTERM happens to land; here the stop is pinned to the evaluation step.
  The records of the stopped-and-resumed run equal an uninterrupted run's, step for step.
  """
  overrides = {"num_train_steps": 6, "eval_every_steps": 3, "checkpoint_every_steps": 100, "log_every_steps": 1,
               "eval_split": "validation[:8]", "eval_batch_size": 8}
  devices = jax.devices()[:1]
  loop.train_and_evaluate(tiny_config(shapes_data_dir, **overrides), tmp_path / "one", progress=False,
                          devices=devices)

  class StopAt3(loop.Preemption):
    def reached(self, step):
      return step == 3

  with monkeypatch.context() as m:
    m.setattr(loop, "Preemption", StopAt3)
    loop.train_and_evaluate(tiny_config(shapes_data_dir, **overrides), tmp_path / "two", progress=False,
                            devices=devices)
  assert checkpoint_lib.Checkpointer(tmp_path / "two").all_steps() == [3]
  loop.train_and_evaluate(tiny_config(shapes_data_dir, **overrides), tmp_path / "two", progress=False,
                          devices=devices)

  def records(name):
    lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
    return sorted(((r["step"], "loss" in r), r) for r in map(json.loads, lines))

  ours, theirs = records("one"), records("two")
  assert [k for k, _ in theirs] == [k for k, _ in ours]
  assert [k for k, _ in ours if not k[1]] == [(3, False), (6, False)]
  for (key, a), (_, b) in zip(ours, theirs):
    for name in ("loss", "eval/mean_iou", "eval/pixel_accuracy"):
      if name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-5, err_msg=f"{key} {name}")
