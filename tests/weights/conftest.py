"""The Keras ResNet50 file shared by tests/weights/test_mapping.py and test_files.py (built once). Importing
references here chooses Keras' backend before any test module imports keras."""

import numpy as np
import pytest

from tests.weights import references


@pytest.fixture(scope="package")
def keras_resnet50(tmp_path_factory):
  keras = pytest.importorskip("keras")
  model = keras.applications.ResNet50(weights=None, include_top=False, input_shape=(64, 64, 3))
  references.randomize_keras(model, np.random.default_rng(1))
  return model, references.save_keras(model, tmp_path_factory.mktemp("keras") / "resnet50_notop.h5")
