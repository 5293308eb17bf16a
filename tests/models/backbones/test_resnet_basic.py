"""ResNet-18/34 (basic blocks): torchvision's parameter counts and names, stage shapes with and without dilation,
and torchvision resnet18/34 state dicts imported through segjax.weights computing torchvision's features."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from segjax import weights
from segjax.models.backbones import resnet as resnet_lib
from tests.conftest import import_torchvision
from tests.models.common import abstract_variables, count_params

X64 = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)


class _Classifier(nn.Module):
  """ResNet + global average pool + 1000-way fc: torchvision's ImageNet model, whose size is published."""
  depth: int

  @nn.compact
  def __call__(self, x, *, train):
    features = resnet_lib.ResNet(self.depth, name="backbone")(x, train=train)["layer4"]
    return nn.Dense(1000, name="fc")(features.mean(axis=(1, 2)))


# torchvision.models docs, ResNet{18,34}_Weights.IMAGENET1K_V1 "num_params".
@pytest.mark.parametrize("depth,published", [(18, 11_689_512), (34, 21_797_672)])
def test_resnet_with_fc_matches_torchvision_parameter_count(depth, published):
  assert count_params(abstract_variables(_Classifier(depth), X64)["params"]) == published


def test_basic_block_parameter_names_are_torchvisions():
  params = abstract_variables(resnet_lib.ResNet(18), X64)["params"]
  assert set(params["layer1_0"]) == {"conv1", "bn1", "conv2", "bn2"}  # no projection: 64 -> 64, stride 1
  assert set(params["layer2_0"]) == {"conv1", "bn1", "conv2", "bn2", "downsample_0", "downsample_1"}
  assert params["layer2_0"]["conv1"]["kernel"].shape == (3, 3, 64, 128)
  assert params["layer2_0"]["downsample_0"]["kernel"].shape == (1, 1, 64, 128)
  assert weights.model_architecture(params) == "resnet18"
  assert weights.model_architecture(abstract_variables(resnet_lib.ResNet(34), X64)["params"]) == "resnet34"
  # ResNet-34 and ResNet-50 both have 6 blocks in layer3: the block type tells them apart.
  assert weights.model_architecture(abstract_variables(resnet_lib.ResNet(50), X64)["params"]) == "resnet50"


@pytest.mark.parametrize("output_stride", [8, 32])
def test_stage_shapes(output_stride):
  model = resnet_lib.ResNet(34, output_stride=output_stride)
  stride = {"stem": 2, "layer1": 4, "layer2": 8, "layer3": min(16, output_stride), "layer4": output_stride}
  channels = {"stem": 64, "layer1": 64, "layer2": 128, "layer3": 256, "layer4": 512}
  x = jax.ShapeDtypeStruct((2, 64, 65, 3), jnp.float32)
  outputs = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x, train=False)[0], x)
  for name, out in outputs.items():
    assert out.shape == (2, 64 // stride[name], -(-65 // stride[name]), channels[name]), name


def test_basic_blocks_refuse_stride_in_1x1():
  with pytest.raises(ValueError, match="basic blocks"):
    abstract_variables(resnet_lib.ResNet(18, stride_in_1x1=True), X64)


def _randomise_batch_norms(torch, net):
  """Non-trivial running statistics and affine parameters, so an unmapped or misplaced BN shows up."""
  gen = torch.Generator().manual_seed(0)
  for module in net.modules():
    if isinstance(module, torch.nn.BatchNorm2d):
      n = module.num_features
      module.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
      module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
      module.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
      module.bias.data.copy_(torch.randn(n, generator=gen) * 0.1)


@pytest.mark.parametrize("depth", [18, 34])
def test_torchvision_state_dict_import_computes_torchvisions_features(depth, tmp_path):
  tv = import_torchvision()
  import torch  # pylint: disable=import-outside-toplevel

  torch.manual_seed(depth)
  net = getattr(tv.models, f"resnet{depth}")(weights=None).eval()
  _randomise_batch_norms(torch, net)
  path = tmp_path / f"resnet{depth}.pth"
  torch.save(net.state_dict(), path)

  model = resnet_lib.ResNet(depth)
  x = np.random.default_rng(0).standard_normal((2, 64, 96, 3)).astype(np.float32)
  abstract = abstract_variables(model, jax.ShapeDtypeStruct(x.shape, jnp.float32))
  init_from = ml_collections.ConfigDict(dict(path=str(path), format="auto", architecture="auto", target="auto"))
  params, stats, report = weights.load_into(abstract["params"], abstract["batch_stats"], init_from, model)
  assert report.architecture == f"resnet{depth}" and report.num_left_at_init == 0
  assert set(report.ignored) == {"fc.weight", "fc.bias"}
  ours = jax.jit(lambda v, x: model.apply(v, x, train=False))({"params": params, "batch_stats": stats}, x)

  with torch.no_grad():
    t = torch.from_numpy(x.transpose(0, 3, 1, 2))
    t = net.relu(net.bn1(net.conv1(t)))
    expected = {"stem": t}
    t = net.maxpool(t)
    for i in range(1, 5):
      t = getattr(net, f"layer{i}")(t)
      expected[f"layer{i}"] = t
  for name, value in expected.items():
    value = value.numpy().transpose(0, 2, 3, 1)
    # Residual sums grow with depth (randomly initialised nets): float32 rounding is relative to the map's scale.
    np.testing.assert_allclose(np.asarray(ours[name]), value, rtol=0, atol=2e-5 * np.abs(value).max(), err_msg=name)


def test_a_resnet34_file_does_not_load_into_a_resnet50(tmp_path):
  tv = import_torchvision()
  import torch  # pylint: disable=import-outside-toplevel

  path = tmp_path / "resnet34.pth"
  torch.save(tv.models.resnet34(weights=None).state_dict(), path)
  model = resnet_lib.ResNet(50)
  abstract = abstract_variables(model, X64)
  init_from = ml_collections.ConfigDict(dict(path=str(path), format="auto", architecture="auto", target="auto"))
  with pytest.raises(ValueError, match="holds resnet34 weights, but .* resnet50 backbone"):
    weights.load_into(abstract["params"], abstract["batch_stats"], init_from, model)
