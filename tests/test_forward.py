"""segjax.forward, the one forward pass of training, evaluation, the Segmenter, predict and export, against numpy:
normalisation, zero padding to the size divisor, mirror padding of valid-convolution nets, the crop back."""

import jax
import numpy as np
import pytest

from segjax import forward, models


def _init(model, side, channels=3):
  return model.init(jax.random.key(0), np.zeros((1, side, side, channels), np.float32), train=False)


def _image(h, w, c=3, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (2, h, w, c)).astype(np.uint8)


def test_variables_holds_batch_stats_only_when_there_are_some():
  assert forward.variables({"w": 1}, {}) == {"params": {"w": 1}}
  assert forward.variables({"w": 1}, {"m": 2}) == {"params": {"w": 1}, "batch_stats": {"m": 2}}


def test_mean_std_and_per_image_normalisation_against_numpy():
  image = _image(5, 7)
  model = models.build_model("unet", 3, depth=1, base_features=2)
  x = np.asarray(forward.Forward(model, (10.0, 20.0, 30.0), (2.0, 4.0, 8.0)).normalize(image))
  np.testing.assert_allclose(x, (image - np.array([10.0, 20.0, 30.0])) / np.array([2.0, 4.0, 8.0]), rtol=1e-6)
  x = np.asarray(forward.Forward(model, normalization="per_image").normalize(image))
  flat = image.reshape(2, -1).astype(np.float64)
  mean = flat.mean(1)[:, None, None, None]
  std = np.maximum(flat.std(1), 1 / np.sqrt(flat.shape[1]))[:, None, None, None]  # tf.image.per_image_standardization
  np.testing.assert_allclose(x, (image - mean) / std, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="normalization='zca'"):
    forward.Forward(model, normalization="zca")


def test_per_image_statistics_match_the_tf_definition_on_device_and_on_the_host():
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (3, 5, 7, 3)).astype(np.float64)
  x[2] = 42.0  # constant image: std floored at 1/sqrt(N) -> zeros, not NaN
  model = models.build_model("unet", 3, depth=1, base_features=2)
  got = np.asarray(forward.Forward(model, normalization="per_image").normalize(x.astype(np.float32)))
  n = 5 * 7 * 3
  for i in range(3):
    ref = (x[i] - x[i].mean()) / max(x[i].std(), 1 / np.sqrt(n))
    np.testing.assert_allclose(got[i], ref, rtol=1e-4, atol=1e-5)
    mean, std = forward.per_image_stats_host(x[i].astype(np.uint8))  # the host twin, for images too large
    np.testing.assert_allclose((mean, std), (x[i].mean(), max(x[i].std(), 1 / np.sqrt(n))), rtol=1e-12)


def test_padded_net_sees_the_image_zero_padded_to_its_divisor_and_is_cropped_back():
  model = models.build_model("unet", 3, depth=2, base_features=4)  # size divisor 4
  variables = _init(model, 8)
  image = _image(10, 13)
  fwd = forward.Forward(model, (127.5,), (127.5,))
  got = np.asarray(fwd(variables, image))
  x = (image.astype(np.float32) - 127.5) / 127.5
  padded = np.pad(x, ((0, 0), (0, 2), (0, 3), (0, 0)))  # zeros after normalisation, bottom and right, to 12 x 16
  want = np.asarray(model.apply(variables, padded, train=False))[:, :10, :13]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert got.dtype == np.float32 and got.shape == (2, 10, 13, 3)


def test_valid_conv_net_sees_the_image_mirror_padded_by_its_margin():
  model = models.build_model("unet_valid", 2, depth=1, base_features=2)
  margin, size = int(model.input_margin), model.input_size_for(9)
  variables = _init(model, size, 1)
  image = _image(9, 9, 1)
  got = np.asarray(forward.Forward(model, (127.5,), (127.5,))(variables, image))
  x = (image.astype(np.float32) - 127.5) / 127.5
  padded = np.pad(x, ((0, 0), (margin, size - 9 - margin), (margin, size - 9 - margin), (0, 0)), mode="reflect")
  want = np.asarray(model.apply(variables, padded, train=False))[:, :9, :9]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
