"""SegNet and SegNet-Basic: parameter counts against the reference prototxts and the paper, the Caffe geometry on
odd sizes, Caffe's LRN, and index unpooling checked against a numpy argmax loop.

Real forward passes use narrow networks and numpy-filled parameters; everything at full width goes through
`jax.eval_shape` (tests/models/common.py).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax.models.segnet import SegNet, SegNetBasic, local_response_norm
from tests.models.common import (VGG16_CONVS, abstract_variables, apply_shapes, assert_zero_off_argmax,
                                 bn_param_count, check_batch_stats_updated, conv_param_count, count_params,
                                 forward_train, numpy_unpool_reference, param_shapes)


def segnet_param_count(num_classes):
  """alexgkendall/SegNet-Tutorial Models/segnet_train.prototxt: conv+BN(+ReLU) x 13, conv5_3_D ... conv1_2_D
  with BN, and conv1_1_D (3x3 to the classes, no BN) as the classifier."""
  decoder = [(512, 512)] * 5 + [(512, 256), (256, 256), (256, 256), (256, 128), (128, 128), (128, 64), (64, 64)]
  total = sum(conv_param_count(i, o, 3) + bn_param_count(o) for i, o in VGG16_CONVS + decoder)
  return total + conv_param_count(64, num_classes, 3)


def segnet_basic_param_count(num_classes):
  """Models/segnet_basic_train.prototxt: conv1..conv4 and conv_decode4..1 (7x7, 64, each + BN), 1x1 classifier."""
  return (conv_param_count(3, 64, 7) + bn_param_count(64) + 7 * (conv_param_count(64, 64, 7) + bn_param_count(64))
          + conv_param_count(64, num_classes, 1))


def test_segnet_has_the_prototxt_layers_and_29_5m_parameters():
  params = abstract_variables(SegNet(11), (1, 32, 32, 3))["params"]
  n = count_params(params)
  assert n == segnet_param_count(11) == 29_449_355
  # SegNet paper (TPAMI 2017), Table 6: 29.5M parameters.
  assert abs(n - 29.5e6) / 29.5e6 < 0.005
  assert params["conv1_1_D"]["kernel"].shape == (3, 3, 64, 11) and "conv1_1_D_bn" not in params
  assert params["conv4_1_D"]["kernel"].shape == (3, 3, 512, 256)
  assert params["encoder"]["conv5_3"]["kernel"].shape == (3, 3, 512, 512)
  assert len([k for k in params["encoder"] if k.startswith("conv")]) == 13
  assert len([k for k in params if k.endswith("_D")]) == 13


def test_segnet_basic_parameter_count():
  params = abstract_variables(SegNetBasic(11), (1, 32, 32, 3))["params"]
  n = count_params(params)
  assert n == segnet_basic_param_count(11) == 1_416_587
  # SegNet paper (TPAMI 2017), Table 1 lists SegNet-Basic with 1.425M parameters (rounded loosely).
  assert abs(n - 1.425e6) / 1.425e6 < 0.01
  assert params["conv1"]["kernel"].shape == (7, 7, 3, 64)
  assert params["conv_classifier"]["kernel"].shape == (1, 1, 64, 11)


@pytest.mark.parametrize("model,sizes", [
    (SegNet(4, base_features=4), [(32, 32), (45, 60)]),
    (SegNetBasic(4, features=8), [(16, 16), (45, 60)]),
])
def test_parameter_shapes_do_not_depend_on_input_size(model, sizes):
  shapes = [param_shapes(abstract_variables(model, (1, h, w, 3))) for h, w in sizes]
  assert all(s == shapes[0] for s in shapes[1:])


def test_segnet_unpools_to_the_camvid_sizes_of_the_prototxt():
  # segnet_train.prototxt, 360x480 CamVid: upsample5 to 23x30 and upsample4 to 45x60 (Caffe pools round up).
  logits, state = apply_shapes(SegNet(11, base_features=4), (1, 360, 480, 3))
  inter = state["intermediates"]
  assert inter["unpool5"][0].shape[1:3] == (23, 30)
  assert inter["unpool4"][0].shape[1:3] == (45, 60)
  assert inter["unpool1"][0].shape[1:3] == (360, 480)
  assert logits.shape == (1, 360, 480, 11) and logits.dtype == jnp.float32
  # segnet_basic_train.prototxt: upsample4 uses pad_out_h to go from 23 back to 45 rows.
  logits, state = apply_shapes(SegNetBasic(11, features=8), (1, 360, 480, 3))
  assert state["intermediates"]["unpool4"][0].shape[1:3] == (45, 60)
  assert logits.shape == (1, 360, 480, 11)


@pytest.mark.parametrize("model,size", [(SegNet(3, base_features=4), (36, 52)), (SegNet(3, base_features=4), (1, 1)),
                                        (SegNetBasic(3, features=8), (17, 9))])
def test_segnet_output_has_the_input_size(model, size):
  logits, _ = apply_shapes(model, (2, *size, 3))
  assert logits.shape == (2, *size, 3) and logits.dtype == jnp.float32


@pytest.mark.parametrize("model", [SegNet(3, base_features=4, dtype=jnp.bfloat16),
                                   SegNetBasic(3, features=8, dtype=jnp.bfloat16)])
def test_bfloat16_compute_gives_float32_logits_and_params(model):
  logits, variables = apply_shapes(model, (1, 224, 224, 3))
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables["params"]))
  assert logits.dtype == jnp.float32


def test_lrn_matches_caffe_formula():
  x = np.random.default_rng(0).normal(0, 30, (2, 3, 4, 7)).astype(np.float32)
  size, alpha, beta = 5, 1e-4, 0.75
  ref = np.empty_like(x)
  for c in range(x.shape[-1]):
    lo, hi = max(0, c - size // 2), min(x.shape[-1], c + size // 2 + 1)
    ref[..., c] = x[..., c] / (1 + alpha / size * (x[..., lo:hi] ** 2).sum(-1)) ** beta
  np.testing.assert_allclose(np.asarray(local_response_norm(jnp.asarray(x), size, alpha, beta)), ref, rtol=1e-5)


@pytest.fixture(scope="module")
def segnet_run():
  return forward_train(SegNet(5, base_features=4), (2, 45, 60, 3))


@pytest.fixture(scope="module")
def segnet_basic_run():
  return forward_train(SegNetBasic(5, features=8), (2, 45, 60, 3))


def test_segnet_decoder_unpools_to_the_encoder_argmax(segnet_run):
  _, (_, state) = segnet_run
  inter = state["intermediates"]
  pre5 = inter["encoder"]["pre_pool5"][0]
  assert pre5.shape == (2, 3, 4, 32)  # 45x60 -> 23x30 -> 12x15 -> 6x8 -> 3x4 (ceil), then a partial window
  # The first decoder stage unpools pool5 itself: every window's maximum back in place, zeros elsewhere.
  expected, _ = numpy_unpool_reference(pre5)
  np.testing.assert_array_equal(inter["unpool5"][0], expected)
  assert_zero_off_argmax(inter["unpool1"][0], inter["encoder"]["pre_pool1"][0])
  assert_zero_off_argmax(inter["unpool3"][0], inter["encoder"]["pre_pool3"][0])


def test_segnet_basic_decoder_unpools_to_the_encoder_argmax(segnet_basic_run):
  _, (_, state) = segnet_basic_run
  inter = state["intermediates"]
  expected, _ = numpy_unpool_reference(inter["pre_pool4"][0])
  np.testing.assert_array_equal(inter["unpool4"][0], expected)
  assert_zero_off_argmax(inter["unpool1"][0], inter["pre_pool1"][0])
  assert_zero_off_argmax(inter["unpool2"][0], inter["pre_pool2"][0])


@pytest.mark.parametrize("run", ["segnet_run", "segnet_basic_run"])
def test_train_forward_gives_logits_and_updates_batch_stats(run, request):
  check_batch_stats_updated(request.getfixturevalue(run))
