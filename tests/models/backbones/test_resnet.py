"""ResNet backbones: published and analytic parameter counts, output strides, the dilation layout, the atrous
equivalence of dilated and strided networks, zero-initialised residuals and torchvision's parameter names."""

import flax.linen as nn
import jax
import jax.extend as jex
import jax.numpy as jnp
import numpy as np
import pytest

from segjax.models.backbones import resnet as resnet_lib
from tests.models.common import abstract_variables, count_params, numpy_variables


X64 = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)


class _Classifier(nn.Module):
  """ResNet + global average pool + 1000-way fc: torchvision's ImageNet model, whose size is published."""
  depth: int

  @nn.compact
  def __call__(self, x, *, train):
    features = resnet_lib.ResNet(self.depth, name="backbone")(x, train=train)["layer4"]
    return nn.Dense(1000, name="fc")(features.mean(axis=(1, 2)))


# torchvision.models docs, ResNet{50,101,152}_Weights.IMAGENET1K_V1 "num_params".
@pytest.mark.parametrize("depth,published", [(50, 25_557_032), (101, 44_549_160), (152, 60_192_808)])
def test_resnet_with_fc_matches_torchvision_parameter_count(depth, published):
  assert count_params(abstract_variables(_Classifier(depth), X64)["params"]) == published


def resnet_param_count(depth, stem, stem_width=64, width=64):
  """Parameters of the backbone (no fc) written out from He et al. 2016, Table 1 (bottleneck 1x1-3x3-1x1 with
  4x expansion, projection shortcut in each stage's first block; BN after every conv: scale + offset, no conv
  bias) and the two stems (7x7/2 to 64; or 3x3 convs stem_width, stem_width, 2 * stem_width)."""
  blocks = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}[depth]

  def conv_bn(cin, cout, k):
    return k * k * cin * cout + 2 * cout

  if stem == "standard":
    total, cin = conv_bn(3, stem_width, 7), stem_width
  else:
    w = stem_width
    total, cin = conv_bn(3, w, 3) + conv_bn(w, w, 3) + conv_bn(w, 2 * w, 3), 2 * w
  for stage, n in enumerate(blocks):
    f = width * 2**stage
    for i in range(n):
      total += conv_bn(cin, f, 1) + conv_bn(f, f, 3) + conv_bn(f, 4 * f, 1)
      if i == 0:
        total += conv_bn(cin, 4 * f, 1)
      cin = 4 * f
  return total


@pytest.mark.parametrize("depth,stem,stem_width,expected", [
    (50, "standard", 64, 25_557_032 - 2048 * 1000 - 1000),  # the formula reproduces torchvision's count
    (50, "deep", 64, 23_631_808),   # hszhao/semseg resnet50 deep_base (64-64-128 stem)
    (50, "deep", 32, 23_527_264),   # MMSeg ResNetV1c-50 (32-32-64 stem)
    (101, "deep", 64, 42_623_936),  # hszhao/semseg resnet101 deep_base
])
def test_resnet_backbone_parameter_count(depth, stem, stem_width, expected):
  model = resnet_lib.ResNet(depth, stem=stem, stem_width=stem_width, output_stride=8)
  n = count_params(abstract_variables(model, X64)["params"])
  assert n == resnet_param_count(depth, stem, stem_width) == expected


@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_stage_shapes_follow_output_stride(output_stride):
  model = resnet_lib.ResNet(50, output_stride=output_stride, stem="deep")
  stride = {"stem": 2, "layer1": 4, "layer2": 8, "layer3": min(16, output_stride),
            "layer4": output_stride}
  channels = {"stem": 128, "layer1": 256, "layer2": 512, "layer3": 1024, "layer4": 2048}
  # 65 is odd: PyTorch's explicit padding gives ceil(65 / stride) at every stride.
  x = jax.ShapeDtypeStruct((2, 64, 65, 3), jnp.float32)
  outputs = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x, train=False)[0], x)
  assert set(outputs) == set(stride)
  for name, out in outputs.items():
    assert out.shape == (2, 64 // stride[name], -(-65 // stride[name]), channels[name]), name


def _conv_configs(model, x):
  """(kernel side, stride, dilation, padding) of every convolution in execution order, read from the jaxpr."""
  variables = abstract_variables(model, x)
  jaxpr = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(variables, x)
  configs = []

  def visit(jpr):
    for eqn in jpr.eqns:
      if eqn.primitive.name == "conv_general_dilated":
        k = eqn.invars[1].aval.shape[0]
        configs.append((k, eqn.params["window_strides"][0], eqn.params["rhs_dilation"][0],
                        eqn.params["padding"][0][0]))
      for sub in jex.core.jaxprs_in_params(eqn.params):
        visit(sub)

  visit(jaxpr.jaxpr)
  return configs


def expected_conv_configs(blocks, strides, dilations, contract):
  """Convolution layout written out from the semseg / MMSeg recipe: deep stem, then per block conv1 (1x1),
  conv2 (3x3, stride in the first block, padding = dilation), conv3 (1x1), then the first block's 1x1
  projection."""
  configs = [(3, 2, 1, 1), (3, 1, 1, 1), (3, 1, 1, 1)]
  for n, s, d in zip(blocks, strides, dilations):
    for i in range(n):
      di = d // 2 if (contract and i == 0 and d > 1) else d
      configs += [(1, 1, 1, 0), (3, s if i == 0 else 1, di, di), (1, 1, 1, 0)]
      if i == 0:
        configs.append((1, s, 1, 0))
  return configs


@pytest.mark.parametrize("output_stride,strides,dilations,contract", [
    (8, (1, 2, 1, 1), (1, 1, 2, 4), False),   # hszhao/semseg pspnet.py: every layer3/layer4 conv2 dilated
    (8, (1, 2, 1, 1), (1, 1, 2, 4), True),    # torchvision replace_stride_with_dilation=[False, True, True]
    (16, (1, 2, 2, 1), (1, 1, 1, 2), False),
])
def test_dilation_layout(output_stride, strides, dilations, contract):
  model = resnet_lib.ResNet(50, output_stride=output_stride, stem="deep", contract_dilation=contract)
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  assert _conv_configs(model, x) == expected_conv_configs((3, 4, 6, 3), strides, dilations, contract)


def test_dilated_network_is_the_strided_one_evaluated_densely():
  # The atrous algorithm (DeepLab, Sec. 3.1): removing a stride and dilating every later convolution by it
  # computes the same function on a denser grid. With torchvision's dilation placement this is exact, so the
  # output-stride-8 features sampled every 2nd / 4th position equal the output-stride-32 ones (same weights).
  kwargs = dict(depth=50, stem="deep", stem_width=4, width=4, contract_dilation=True)
  strided_net = resnet_lib.ResNet(output_stride=32, **kwargs)
  dense_net = resnet_lib.ResNet(output_stride=8, **kwargs)

  # 40 = 8 * 5: odd-sized maps from layer2 on, where zero padding must line up too.
  x = np.random.default_rng(0).normal(size=(2, 40, 48, 3)).astype(np.float32)
  variables = numpy_variables(strided_net, x, random_stats=True)
  strided = jax.jit(lambda v, x: strided_net.apply(v, x, train=False))(variables, x)
  dense = jax.jit(lambda v, x: dense_net.apply(v, x, train=False))(variables, x)
  np.testing.assert_allclose(dense["layer2"], strided["layer2"], rtol=1e-5, atol=1e-5)
  for name, step in (("layer3", 2), ("layer4", 4)):
    assert dense[name].shape[1:3] == (40 // 8, 48 // 8)
    np.testing.assert_allclose(dense[name][:, ::step, ::step], strided[name], rtol=1e-4, atol=1e-4)


def test_zero_init_residual_block_starts_as_identity():
  # A block's input is a ReLU output. The "rbg" key compiles much faster than threefry on XLA:CPU.
  x = np.maximum(np.random.default_rng(0).normal(size=(2, 5, 5, 16)), 0).astype(np.float32)
  block = resnet_lib.Bottleneck(4, zero_init_last_bn=True)
  key = jax.random.key(1, impl="rbg")
  variables, y = jax.jit(lambda x: block.init_with_output(key, x, train=False)[::-1])(x)
  np.testing.assert_array_equal(variables["params"]["bn3"]["scale"], 0.0)
  np.testing.assert_allclose(y, x, atol=1e-6)
  plain = jax.eval_shape(lambda x: resnet_lib.Bottleneck(4).init(jax.random.key(1), x, train=False), x)
  assert plain["params"]["bn3"]["scale"].shape == (16,)


def test_resnet_param_names_follow_torchvision():
  params = abstract_variables(resnet_lib.ResNet(50), X64)["params"]
  assert {"conv1", "bn1", "layer1_0", "layer1_2", "layer4_2"} <= set(params)
  assert set(params["layer1_0"]) == {"conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "downsample_0",
                                     "downsample_1"}
  assert "downsample_0" not in params["layer1_1"]
  assert params["layer2_0"]["conv2"]["kernel"].shape == (3, 3, 128, 128)  # HWIO of layer2.0.conv2.weight


def test_resnet_rejects_bad_options():
  for kwargs, match in ((dict(output_stride=4), "output_stride"), (dict(depth=35), "depth"),
                        (dict(stem="tiny"), "stem")):
    with pytest.raises(ValueError, match=match):
      abstract_variables(resnet_lib.ResNet(**kwargs), X64)
