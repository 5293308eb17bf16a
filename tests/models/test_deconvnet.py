"""DeconvNet: parameter count against the reference prototxt and the paper, fc6's geometry and input size limits,
and index unpooling to the encoder's argmax positions.

Real forward passes use narrow networks and numpy-filled parameters; everything at full width goes through
`jax.eval_shape` (tests/models/common.py).
"""

import jax
import jax.numpy as jnp
import pytest

from segjax.models.deconvnet import DeconvNet
from tests.models.common import (VGG16_CONVS, abstract_variables, apply_shapes, assert_zero_off_argmax,
                                 bn_param_count, check_batch_stats_updated, conv_param_count, count_params,
                                 forward_train, param_shapes)


def deconvnet_param_count(num_classes):
  """HyeonwooNoh/DeconvNet DeconvNet_inference_deploy.prototxt: BN after every conv and deconv layer."""
  total = sum(conv_param_count(i, o, 3) + bn_param_count(o) for i, o in VGG16_CONVS)
  total += conv_param_count(512, 4096, 7) + bn_param_count(4096)  # fc6
  total += conv_param_count(4096, 4096, 1) + bn_param_count(4096)  # fc7
  total += conv_param_count(4096, 512, 7) + bn_param_count(512)  # fc6-deconv
  deconvs = [(512, 512)] * 5 + [(512, 256), (256, 256), (256, 256), (256, 128), (128, 128), (128, 64), (64, 64),
                                (64, 64)]
  total += sum(conv_param_count(i, o, 3) + bn_param_count(o) for i, o in deconvs)
  return total + conv_param_count(64, num_classes, 1)  # seg-score


def test_deconvnet_has_the_prototxt_layers_and_252m_parameters():
  params = abstract_variables(DeconvNet(21), (1, 224, 224, 3))["params"]
  n = count_params(params)
  assert n == deconvnet_param_count(21) == 251_805_653
  # Noh et al. (ICCV 2015) and SegNet (TPAMI 2017, Table 6): 252M parameters.
  assert abs(n - 252e6) / 252e6 < 0.005
  assert params["fc6"]["kernel"].shape == (7, 7, 512, 4096)
  assert params["fc7"]["kernel"].shape == (1, 1, 4096, 4096)
  assert params["fc6_deconv"]["kernel"].shape == (7, 7, 4096, 512)
  assert params["deconv4_3"]["kernel"].shape == (3, 3, 512, 256)
  assert params["seg_score"]["kernel"].shape == (1, 1, 64, 21)


@pytest.mark.parametrize("model,sizes", [
    (DeconvNet(4, base_features=4, fc_features=8), [(224, 224), (257, 300)]),
    (DeconvNet(4, base_features=4, fc_features=8, fc6_padding="SAME"), [(32, 32), (37, 50)]),
])
def test_parameter_shapes_do_not_depend_on_input_size(model, sizes):
  shapes = [param_shapes(abstract_variables(model, (1, h, w, 3))) for h, w in sizes]
  assert all(s == shapes[0] for s in shapes[1:])


def test_deconvnet_fc6_collapses_a_224_input_to_1x1():
  model = DeconvNet(21)
  logits, state = apply_shapes(model, (2, 224, 224, 3), capture_intermediates=True)
  inter = state["intermediates"]
  assert inter["fc6"]["__call__"][0].shape == (2, 1, 1, 4096)
  assert inter["fc6_deconv"]["__call__"][0].shape == (2, 7, 7, 512)
  assert inter["unpool5"][0].shape == (2, 14, 14, 512)
  assert logits.shape == (2, 224, 224, 21) and logits.dtype == jnp.float32


def test_deconvnet_input_size_limits():
  model = DeconvNet(5, base_features=4, fc_features=8)
  assert model.min_input_size == 193  # ceil(193 / 32) = 7 = fc6's kernel
  logits, state = apply_shapes(model, (1, 193, 250, 3))
  assert state["intermediates"]["encoder"]["pre_pool5"][0].shape[1:3] == (13, 16)
  assert logits.shape == (1, 193, 250, 5)
  with pytest.raises(ValueError, match="at least 193"):
    apply_shapes(model, (1, 192, 250, 3))
  same = DeconvNet(5, base_features=4, fc_features=8, fc6_padding="SAME")
  logits, _ = apply_shapes(same, (1, 37, 50, 3))
  assert logits.shape == (1, 37, 50, 5)
  with pytest.raises(ValueError, match="fc6_padding"):
    apply_shapes(DeconvNet(5, base_features=4, fc_features=8, fc6_padding="FULL"), (1, 224, 224, 3))


@pytest.mark.parametrize("model", [DeconvNet(3, base_features=4, fc_features=8, dtype=jnp.bfloat16)])
def test_bfloat16_compute_gives_float32_logits_and_params(model):
  logits, variables = apply_shapes(model, (1, 224, 224, 3))
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables["params"]))
  assert logits.dtype == jnp.float32


@pytest.fixture(scope="module")
def deconvnet_run():
  return forward_train(DeconvNet(5, base_features=4, fc_features=16), (2, 193, 200, 3))


def test_deconvnet_decoder_unpools_to_the_encoder_argmax(deconvnet_run):
  _, (_, state) = deconvnet_run
  inter = state["intermediates"]
  for s in (5, 1):
    assert_zero_off_argmax(inter[f"unpool{s}"][0], inter["encoder"][f"pre_pool{s}"][0])


@pytest.mark.parametrize("run", ["deconvnet_run"])
def test_train_forward_gives_logits_and_updates_batch_stats(run, request):
  check_batch_stats_updated(request.getfixturevalue(run))
