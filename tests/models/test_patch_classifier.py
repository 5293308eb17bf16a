"""Sliding-window patch classifier (Ciresan et al. 2012): the N4 parameter count, dense output against the
classifier applied to each pixel's mirror-padded patch, chunking, strides and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax.models import patch_classifier
from segjax.models.patch_classifier import PatchClassifier, PatchNet, sliding_window_predict
from tests.models.common import abstract_variables, count_params, numpy_params, random_image


_TINY = dict(patch_size=9, features=(4, 5), kernel_sizes=(2, 2), hidden=8)


def test_ciresan_n4_parameter_count():
  # Ciresan et al., NIPS 2012, Table 1 (network N4, 65x65 window), layer by layer:
  n4 = (4 * 4 * 1 * 48 + 48          # conv 4x4, 48 maps: 65 -> 62, pool -> 31
        + 4 * 4 * 48 * 48 + 48       # conv 4x4, 48 maps: 31 -> 28, pool -> 14
        + 3 * 3 * 48 * 48 + 48       # conv 3x3, 48 maps: 14 -> 12, pool -> 6
        + 3 * 3 * 48 * 48 + 48       # conv 3x3, 48 maps: 6 -> 4, pool -> 2
        + 2 * 2 * 48 * 200 + 200     # fully connected, 200 neurons
        + 200 * 2 + 2)               # fully connected, 2 outputs
  assert n4 == 118_298
  assert patch_classifier.patch_feature_sides(65, (4, 4, 3, 3)) == [31, 14, 6, 2]
  model = PatchClassifier(num_classes=2)
  for side in (65, 100):  # independent of the image size
    assert count_params(abstract_variables(model, (1, side, side, 1))["params"]) == n4


def _reflect(i, n):
  """Mirror index without repeating the edge (numpy's 'reflect'), for overhangs smaller than n."""
  if i < 0:
    return -i
  if i >= n:
    return 2 * (n - 1) - i
  return i


def _numpy_patch(image, b, i, j, p):
  """The p x p patch of image[b] whose index p // 2 is pixel (i, j), mirrored at the borders, by a loop."""
  h, w, _ = image.shape[1:]
  rows = [_reflect(i + d, h) for d in range(-(p // 2), p - p // 2)]
  cols = [_reflect(j + d, w) for d in range(-(p // 2), p - p // 2)]
  return image[b][np.ix_(rows, cols)]


def _anchor(i, stride, n):
  return min(i // stride * stride + (stride - 1) // 2, n - 1)


@pytest.mark.parametrize("stride", [1, 2, 3])
def test_dense_output_is_the_classifier_on_each_pixels_patch(stride):
  model = PatchClassifier(num_classes=3, stride=stride, chunk_size=7, **_TINY)
  image = random_image((2, 7, 5, 2))
  params = numpy_params(model, image.shape)
  dense = np.asarray(jax.jit(lambda p, x: model.apply({"params": p}, x, train=False))(params, image))
  assert dense.shape == (2, 7, 5, 3) and dense.dtype == np.float32
  # Brute force: every pixel's own patch (its block anchor's, for stride > 1), cut out by a numpy loop.
  pixels = [(b, i, j) for b in range(2) for i in range(7) for j in range(5)]
  patches = np.stack([_numpy_patch(image, b, _anchor(i, stride, 7), _anchor(j, stride, 5), 9)
                      for b, i, j in pixels])
  net = PatchNet(3, (4, 5), (2, 2), 8)
  expected = np.asarray(net.apply({"params": params["net"]}, patches)).reshape(2, 7, 5, 3)
  np.testing.assert_allclose(dense, expected, rtol=1e-5, atol=1e-5)
  if stride > 1:  # constant over each stride x stride block, and not constant overall
    assert np.array_equal(dense[:, :stride, :stride], np.broadcast_to(dense[:, :1, :1], (2, stride, stride, 3)))
    assert not np.allclose(dense[:, 0, 0], dense[:, -1, -1])


def test_output_shapes_for_odd_sizes_and_chunking_invariance():
  image = random_image((1, 11, 6, 1))
  base = PatchClassifier(num_classes=2, chunk_size=1, **_TINY)
  params = numpy_params(base, image.shape)
  outs = []
  for chunk_size in (1, 13, 1000):
    model = base.clone(chunk_size=chunk_size)
    outs.append(np.asarray(jax.jit(lambda p, x, m=model: m.apply({"params": p}, x, train=False))(params, image)))
  assert all(o.shape == (1, 11, 6, 2) for o in outs)
  for o in outs[1:]:
    np.testing.assert_allclose(o, outs[0], rtol=1e-6, atol=1e-6)
  y = jax.eval_shape(lambda p, x: base.clone(stride=4).apply({"params": p}, x, train=False), params, image)
  assert y.shape == (1, 11, 6, 2)


def test_sliding_window_predict_with_a_linear_classifier_and_even_patch():
  # A linear classifier with a fixed matrix: the dense result is a numpy loop over all pixels.
  p, k = 4, 3
  image = random_image((2, 5, 6, 2), seed=3)
  weights = np.random.default_rng(4).standard_normal((p * p * 2, k)).astype(np.float32)
  classify = lambda patches: patches.reshape(patches.shape[0], -1) @ weights  # noqa: E731
  dense = sliding_window_predict(classify, jnp.asarray(image), patch_size=p, stride=1, chunk_size=8)
  expected = np.zeros((2, 5, 6, k), np.float32)
  for b in range(2):
    for i in range(5):
      for j in range(6):
        expected[b, i, j] = _numpy_patch(image, b, i, j, p).reshape(-1) @ weights
  np.testing.assert_allclose(dense, expected, rtol=1e-5, atol=1e-5)


def test_gradients_flow_through_the_sliding_window():
  model = PatchClassifier(num_classes=2, chunk_size=16, **_TINY)
  image = random_image((1, 6, 6, 1))
  params = numpy_params(model, image.shape)
  loss = lambda p: model.apply({"params": p}, image, train=False).sum()  # noqa: E731
  grads = jax.jit(jax.grad(loss))(params)
  assert all(float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(grads))


def test_patch_classifier_rejects_bad_configurations():
  with pytest.raises(ValueError, match="too small"):
    PatchClassifier(2, patch_size=6, **{k: v for k, v in _TINY.items() if k != "patch_size"}).init(
        jax.random.key(0), jnp.zeros((1, 8, 8, 1)), train=False)
  with pytest.raises(ValueError, match="activation"):
    PatchClassifier(2, activation="sigmoid", **_TINY).init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)), train=False)
