"""Damaged checkpoints (issue 19): a truncated data file, a lost metadata file or manifest in the latest step.

eval/predict/export (checkpoint.restore_checkpoint) and training name the damaged step in one warning and use the
newest checkpoint that restores; an explicit --checkpoint_step of a damaged step is refused, listing the steps that
restore; training moves the damaged step aside (never deletes it), resumes from the fallback, and ends bitwise
equal to an uninterrupted run.
"""

import logging
import pathlib

import jax
import numpy as np
import pytest

from segjax import checkpoint as checkpoint_lib
from segjax import experiment
from segjax.training import loop
from tests.checkpoint_damage import DAMAGES, damage
from tests.conftest import random_checkpoint, tiny_config

def _files(directory: pathlib.Path) -> dict:
  return {str(p.relative_to(directory)): p.stat().st_size for p in directory.rglob("*") if p.is_file()}


@pytest.mark.parametrize("kind", DAMAGES)
def test_damaged_latest_checkpoint_falls_back_for_eval(shapes_data_dir, tmp_path, kind, caplog):
  config = tiny_config(shapes_data_dir)
  random_checkpoint(config, tmp_path, seed=1, step=2)
  _, state4 = random_checkpoint(config, tmp_path, seed=2, step=4)
  _, state2 = random_checkpoint(config, tmp_path / "copy", seed=1, step=2)
  damage(tmp_path / "checkpoints" / "4", kind)
  before = _files(tmp_path / "checkpoints")
  devices = jax.devices()[:1]

  with caplog.at_level(logging.WARNING):
    _, state, step = experiment.restore(config, tmp_path, devices=devices)
  assert step == 2
  for a, b in zip(jax.tree.leaves(jax.device_get(state.params)), jax.tree.leaves(state2.params)):
    np.testing.assert_array_equal(a, b)
  warnings = [r.getMessage() for r in caplog.records if "cannot be restored" in r.getMessage()]
  assert len(warnings) == 1 and "\n" not in warnings[0], warnings
  assert warnings[0].startswith(f"checkpoint step 4 in {tmp_path / 'checkpoints'} cannot be restored (")
  assert warnings[0].endswith("); using step 2, the newest that restores."), warnings[0]
  assert len(warnings[0]) < 600, warnings[0]
  assert _files(tmp_path / "checkpoints") == before  # evaluation moves and deletes nothing

  with pytest.raises(ValueError, match=r"--checkpoint_step=4: checkpoint step 4 in .* cannot be restored \(.*\)\. "
                                       r"Steps that restore: \[2\]; pass one of them, e.g\. --checkpoint_step=2\."):
    experiment.restore(config, tmp_path, checkpoint_step=4, devices=devices)
  del state4


def test_training_resumes_from_the_newest_checkpoint_that_restores_bitwise(shapes_data_dir, tmp_path, caplog):
  config = tiny_config(shapes_data_dir, num_train_steps=6, checkpoint_every_steps=2, log_every_steps=1)
  devices = jax.devices()[:1]
  expected = jax.device_get(loop.train_and_evaluate(config, tmp_path, progress=False, devices=devices))
  step_dir = tmp_path / "checkpoints" / "6"
  damage(step_dir, "truncated-data-file")
  damaged_files = _files(step_dir)

  with caplog.at_level(logging.WARNING):
    resumed = jax.device_get(loop.train_and_evaluate(config, tmp_path, progress=False, devices=devices))
  warnings = [r.getMessage() for r in caplog.records if "cannot be restored" in r.getMessage()]
  assert len(warnings) == 1, warnings
  assert warnings[0].startswith(f"checkpoint step 6 in {tmp_path / 'checkpoints'} cannot be restored (")
  assert "; resuming from step 4, the newest that restores. Moved the damaged checkpoint to " in warnings[0]
  # Moved aside with every file as it was, not deleted; orbax saved step 6 again.
  (moved,) = (tmp_path / "checkpoints_damaged").iterdir()
  assert moved.name.startswith("6-") and _files(moved) == damaged_files
  assert str(tmp_path / "checkpoints_damaged") in warnings[0]
  assert checkpoint_lib.Checkpointer(tmp_path).all_steps()[-1] == 6
  for name in ("step", "params", "opt_state", "batch_stats"):
    for a, b in zip(jax.tree.leaves(getattr(expected, name)), jax.tree.leaves(getattr(resumed, name))):
      np.testing.assert_array_equal(a, b, err_msg=name)
