"""The trained run the bad-input tests (tests/test_bad_input*.py) try to damage, and the check that it is intact."""

import dataclasses
import hashlib
import pathlib

import jax
import pytest

from segjax import checkpoint as checkpoint_lib
from segjax import experiment
from segjax.training import loop
from tests.conftest import tiny_config

# Wide enough that orbax's array files dwarf every other file a run writes (metrics.jsonl, JSON metadata); one
# level deep, which compiles a quarter faster than tiny_config's two.
BASE_FEATURES = 16
DEPTH = 1
STEP = 2


@dataclasses.dataclass
class Run:
  workdir: pathlib.Path
  data_dir: str
  fingerprint: dict[str, str]
  abstract_state: object


def _fingerprint(checkpoints: pathlib.Path) -> dict[str, str]:
  return {str(p.relative_to(checkpoints)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(checkpoints.rglob("*")) if p.is_file()}


def _config(data_dir, **overrides):
  return tiny_config(data_dir, **{"model.base_features": BASE_FEATURES, "model.depth": DEPTH, **overrides})


@pytest.fixture(scope="module")
def run(shapes_data_dir, tmp_path_factory) -> Run:
  workdir = tmp_path_factory.mktemp("trained")
  config = _config(shapes_data_dir, num_train_steps=STEP)
  # One device: compiles and saves faster than 8; the checkpoint restores onto any mesh.
  loop.train_and_evaluate(config, workdir, progress=False, devices=jax.devices()[:1])
  abstract = experiment.build(config, jax.devices()[:1]).abstract_state()
  return Run(workdir, shapes_data_dir, _fingerprint(workdir / "checkpoints"), abstract)


def _assert_intact(run: Run, workdir: pathlib.Path | None = None) -> None:
  """The checkpoint of STEP: the latest, bitwise what training wrote, and restorable.

  In the fixture's own workdir nothing else may appear either; a copy that a failed save was tried on may hold
  that save's temporary directory, which must not count as a step.
  """
  now = _fingerprint((workdir or run.workdir) / "checkpoints")
  if workdir is None:
    assert now == run.fingerprint
  else:
    assert {k: v for k, v in now.items() if k.startswith(f"{STEP}/")} == run.fingerprint
  workdir = workdir or run.workdir
  ckpt = checkpoint_lib.Checkpointer(workdir)
  try:
    assert ckpt.all_steps() == [STEP]
    state = ckpt.restore(STEP, run.abstract_state)
  finally:
    ckpt.close()
  assert int(state.step) == STEP
