"""What `config.init_from` may say (segjax.weights.formats), checked by segjax.config.validate."""

import numpy as np
import pytest

from segjax import config as config_lib
from segjax import weights
from tests.weights.references import deeplab_config


@pytest.mark.parametrize("key,value,match", [
    ("format", "onnx", r"config.init_from.format='onnx': choose one of"),
    ("architecture", "vgg19", r"config.init_from.architecture='vgg19': choose one of"),
    ("path", "weights.ckpt", r"cannot tell the format from the extension '.ckpt'.*set config.init_from.format"),
    ("architecture", "vgg16_bn", r"Keras has no VGG16-BN"),
])
def test_validate_checks_init_from(key, value, match):
  config = deeplab_config("vgg16_notop.h5")
  config.init_from[key] = value
  with pytest.raises(ValueError, match=match):
    config_lib.validate(config)


def test_normalization_follows_the_file_format():
  # keras.applications' "caffe" preprocess_input subtracts the BGR means (103.939, 116.779, 123.68); torchvision
  # normalises x / 255 by mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225).
  assert weights.input_normalization(weights.resolve_format("vgg16_notop.H5", "auto"), "vgg16") == (
      (123.68, 116.779, 103.939), (1.0, 1.0, 1.0))
  mean, std = weights.input_normalization(weights.resolve_format("resnet50.safetensors", "auto"), "resnet50")
  np.testing.assert_allclose(mean, (123.675, 116.28, 103.53))
  np.testing.assert_allclose(std, (58.395, 57.12, 57.375))
  mean, std = weights.input_normalization("torch", "vgg16_bn", num_channels=1)  # a gray image as R = G = B
  np.testing.assert_allclose((mean, std), (((123.675 + 116.28 + 103.53) / 3,), ((58.395 + 57.12 + 57.375) / 3,)))
  assert weights.resolve_format("weights.bin", "keras_h5") == "keras_h5"  # an explicit format wins
  with pytest.raises(ValueError, match=r"config.init_from.format='onnx': choose 'keras_h5' or 'torch'"):
    weights.input_normalization("onnx")
