"""The quickstart recipe, unchanged, reaches mean IoU >= 0.8 on the shapes test split (a few minutes on 2 cores)."""

import time

import pytest

from segjax.evaluation import metrics
from segjax.evaluation import semantic as evaluate
from segjax import experiment
from segjax.training import loop
from tests.conftest import REPO


@pytest.mark.slow
def test_quickstart_reaches_target_miou(shapes_data_dir, tmp_path):
  from tests.test_configs import load  # pylint: disable=import-outside-toplevel
  config = load(REPO / "configs" / "quickstart.py")
  config.dataset.data_dir = shapes_data_dir
  # The recipe trains on a 1-device mesh (what command 1 gets); the test session has 8 simulated devices.
  config.mesh.data = 1
  start = time.perf_counter()
  state = loop.train_and_evaluate(config, tmp_path, progress=False)
  train_seconds = time.perf_counter() - start
  cm = evaluate.evaluate(experiment.build(config), state, "test", progress=False).cm
  result = metrics.compute_metrics(cm)
  print(f"quickstart: {config.num_train_steps} steps in {train_seconds:.0f} s, test mIoU {result['mean_iou']:.4f}, "
        f"pixel accuracy {result['pixel_accuracy']:.4f}")
  assert result["mean_iou"] >= 0.8, metrics.format_table(result)
