"""ResNet backbones and PSPNet: published and analytic parameter counts, output strides, the dilation layout,
the atrous equivalence of dilated and strided networks, adaptive pooling and the pyramid pooling module against
numpy loops, and the auxiliary head's sowing."""

import flax.linen as nn
import jax
import jax.extend as jex
import jax.numpy as jnp
import numpy as np
import pytest

from segjax.models import pspnet as pspnet_lib
from segjax.models.backbones import resnet as resnet_lib
from segjax.ops.norm import BatchNorm

X64 = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)


def _count(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def _abstract_variables(model, x):
  """Variable shapes from `jax.eval_shape`: traces `init` without computing anything."""
  return jax.eval_shape(lambda x: model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, x,
                                             train=False), x)


def _numpy_variables(model, x, seed=0):
  """Random variables of the model's shapes, drawn with numpy.

  Compiling `jax.random` (threefry) takes seconds per program on XLA:CPU, and any values serve these tests;
  BatchNorm statistics and affine parameters are random too, so the references must apply them.
  """
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    if name == "kernel":
      return (rng.normal(size=leaf.shape) * np.sqrt(2 / np.prod(leaf.shape[:-1]))).astype(np.float32)
    if name in ("scale", "var"):
      return rng.uniform(0.5, 1.5, size=leaf.shape).astype(np.float32)
    return (0.1 * rng.normal(size=leaf.shape)).astype(np.float32)  # bias, mean

  return jax.tree_util.tree_map_with_path(draw, _abstract_variables(model, x))


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
  assert _count(_abstract_variables(_Classifier(depth), X64)["params"]) == published


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
  n = _count(_abstract_variables(model, X64)["params"])
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
  variables = _abstract_variables(model, x)
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
  variables = _numpy_variables(strided_net, x)
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
  params = _abstract_variables(resnet_lib.ResNet(50), X64)["params"]
  assert {"conv1", "bn1", "layer1_0", "layer1_2", "layer4_2"} <= set(params)
  assert set(params["layer1_0"]) == {"conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "downsample_0",
                                     "downsample_1"}
  assert "downsample_0" not in params["layer1_1"]
  assert params["layer2_0"]["conv2"]["kernel"].shape == (3, 3, 128, 128)  # HWIO of layer2.0.conv2.weight


def test_resnet_rejects_bad_options():
  for kwargs, match in ((dict(output_stride=4), "output_stride"), (dict(depth=34), "depth"),
                        (dict(stem="tiny"), "stem")):
    with pytest.raises(ValueError, match=match):
      _abstract_variables(resnet_lib.ResNet(**kwargs), X64)


def _adaptive_pool_reference(x, oh, ow):
  """numpy loop over PyTorch's AdaptiveAvgPool2d bins: start = floor(i*H/o), end = ceil((i+1)*H/o)."""
  b, h, w, c = x.shape
  out = np.zeros((b, oh, ow, c), np.float64)
  for i in range(oh):
    h0, h1 = int(np.floor(i * h / oh)), int(np.ceil((i + 1) * h / oh))
    for j in range(ow):
      w0, w1 = int(np.floor(j * w / ow)), int(np.ceil((j + 1) * w / ow))
      out[:, i, j] = np.asarray(x, np.float64)[:, h0:h1, w0:w1].mean(axis=(1, 2))
  return out


def test_adaptive_avg_pool_matches_pytorch_bins():
  rng = np.random.default_rng(0)
  bins = (1, 2, 3, 6)
  pool = jax.jit(lambda x: [pspnet_lib.adaptive_avg_pool(x, b) for b in bins])
  # Overlapping bins (7, 10, 61), exact tiling (12, 60), and more bins than inputs (3, 5).
  for h, w in ((7, 10), (12, 3), (60, 61)):
    x = rng.normal(size=(2, h, w, 3)).astype(np.float32)
    for b, y in zip(bins, pool(x)):
      np.testing.assert_allclose(y, _adaptive_pool_reference(x, b, b), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(pspnet_lib.adaptive_avg_pool(x, (2, 5)), _adaptive_pool_reference(x, 2, 5),
                             rtol=1e-5, atol=1e-6)
  assert pspnet_lib.adaptive_avg_pool(jnp.ones((1, 7, 7, 2), jnp.bfloat16), 3).dtype == jnp.bfloat16


def _bilinear_align_corners(x, oh, ow):
  """numpy loop: output (i, j) samples input (i * (h - 1) / (oh - 1), j * (w - 1) / (ow - 1))."""
  b, h, w, c = x.shape
  out = np.zeros((b, oh, ow, c))
  for i in range(oh):
    y = i * (h - 1) / (oh - 1) if oh > 1 else 0.0
    y0 = min(int(np.floor(y)), h - 1)
    y1, fy = min(y0 + 1, h - 1), y - y0
    for j in range(ow):
      xx = j * (w - 1) / (ow - 1) if ow > 1 else 0.0
      x0 = min(int(np.floor(xx)), w - 1)
      x1, fx = min(x0 + 1, w - 1), xx - x0
      out[:, i, j] = ((1 - fy) * (1 - fx) * x[:, y0, x0] + (1 - fy) * fx * x[:, y0, x1]
                      + fy * (1 - fx) * x[:, y1, x0] + fy * fx * x[:, y1, x1])
  return out


def test_pyramid_pooling_module_matches_numpy():
  x = np.random.default_rng(0).normal(size=(2, 7, 9, 8)).astype(np.float32)
  ppm = pspnet_lib.PyramidPooling((1, 2, 3, 6))
  variables = _numpy_variables(ppm, x)
  y = np.asarray(jax.jit(lambda v, x: ppm.apply(v, x, train=False))(variables, x))
  assert y.shape == (2, 7, 9, 8 + 4 * 2)  # each level reduced to 8 / 4 channels
  np.testing.assert_allclose(y[..., :8], x, rtol=1e-6)
  p, stats = variables["params"], variables["batch_stats"]
  for i, b in enumerate((1, 2, 3, 6)):
    pooled = _adaptive_pool_reference(x, b, b)
    z = pooled @ np.asarray(p[f"conv{i}"]["kernel"][0, 0], np.float64)
    z = (z - stats[f"bn{i}"]["mean"]) / np.sqrt(stats[f"bn{i}"]["var"] + 1e-5)
    z = z * p[f"bn{i}"]["scale"] + p[f"bn{i}"]["bias"]
    ref = _bilinear_align_corners(np.maximum(z, 0), 7, 9)
    np.testing.assert_allclose(y[..., 8 + 2 * i:10 + 2 * i], ref, rtol=1e-4, atol=1e-5)


def test_head_dropout_drops_whole_channels():
  # PyTorch's Dropout2d (semseg, MMSeg): one keep/drop decision per example and channel, kept ones scaled 1/(1-p).
  head = pspnet_lib.ConvHead(3, features=16, dropout_rate=0.5)
  x = np.random.default_rng(0).normal(size=(4, 6, 6, 8)).astype(np.float32)
  variables = _numpy_variables(head, x)

  @jax.jit
  def run(variables, x):
    return head.apply(variables, x, train=True, rngs={"dropout": jax.random.key(2, impl="rbg")},
                      capture_intermediates=lambda m, _: isinstance(m, (nn.Dropout, BatchNorm)),
                      mutable=["batch_stats", "intermediates"])[1]

  state = run(variables, x)
  kept = np.asarray(state["intermediates"]["bn"]["__call__"][0]) / 0.5  # the BatchNorm's fused ReLU output
  dropped = np.asarray(state["intermediates"]["Dropout_0"]["__call__"][0])
  keep = np.any(dropped != 0, axis=(1, 2), keepdims=True)  # [B, 1, 1, C]
  assert 0.2 < keep.mean() < 0.8
  np.testing.assert_allclose(dropped, np.where(keep, kept, 0.0), rtol=1e-6, atol=1e-6)


PSP_BACKBONE = {50: 23_631_808, 101: 42_623_936}  # deep-stem counts from test_resnet_backbone_parameter_count


def pspnet_param_count(num_classes, depth=50, aux=True):
  """Written out from the PSPNet layer table (semseg pspnet.py): PPM 4 x (1x1 2048->512 + BN), 3x3 4096->512 +
  BN, 1x1 512->K with bias; auxiliary 3x3 1024->256 + BN, 1x1 256->K with bias."""
  ppm = 4 * (2048 * 512 + 2 * 512)
  cls = 9 * 4096 * 512 + 2 * 512 + 512 * num_classes + num_classes
  aux_head = 9 * 1024 * 256 + 2 * 256 + 256 * num_classes + num_classes
  return PSP_BACKBONE[depth] + ppm + cls + (aux_head if aux else 0)


@pytest.mark.parametrize("num_classes,depth,aux,expected", [
    (21, 50, True, 49_081_578),    # PASCAL VOC
    (150, 50, True, 49_180_908),   # ADE20K
    (150, 50, False, 46_782_550),  # deployed model: the auxiliary head is dropped after training
    (19, 101, False, 65_707_475),  # Cityscapes PSPNet-101 at inference
])
def test_pspnet_parameter_count(num_classes, depth, aux, expected):
  model = pspnet_lib.PSPNet(num_classes, depth=depth, aux_head=aux)
  n = _count(_abstract_variables(model, jax.ShapeDtypeStruct((1, 33, 33, 3), jnp.float32))["params"])
  assert n == pspnet_param_count(num_classes, depth, aux) == expected


def test_pspnet_aux_logits_are_sown_in_training_only():
  model = pspnet_lib.PSPNet(5, dtype=jnp.bfloat16)  # logits are float32 whatever the compute dtype
  x = jax.ShapeDtypeStruct((2, 40, 57, 3), jnp.float32)
  variables = _abstract_variables(model, x)
  train_out, train_state = jax.eval_shape(
      lambda v, x: model.apply(v, x, train=True, rngs={"dropout": jax.random.key(0)},
                               mutable=["batch_stats", "aux"]), variables, x)
  eval_out, eval_state = jax.eval_shape(lambda v, x: model.apply(v, x, train=False, mutable=["aux"]),
                                        variables, x)
  for out in (train_out, eval_out):
    assert out.shape == (2, 40, 57, 5) and out.dtype == jnp.float32
  (aux,) = train_state["aux"]["logits"]
  assert aux.shape == (2, 40, 57, 5) and aux.dtype == jnp.float32
  assert "aux" not in eval_state

  no_aux = pspnet_lib.PSPNet(5, aux_head=False)
  variables = _abstract_variables(no_aux, x)
  assert "aux" not in variables["params"]
  _, state = jax.eval_shape(lambda v, x: no_aux.apply(v, x, train=True, rngs={"dropout": jax.random.key(0)},
                                                      mutable=["batch_stats", "aux"]), variables, x)
  assert "aux" not in state


def test_pspnet_any_input_size_same_param_shapes():
  model = pspnet_lib.PSPNet(7)
  shapes = {}
  # 9x9 leaves a 2x2 layer4 map, smaller than the 3x3 and 6x6 bins; 473 = 8 * 59 + 1 is semseg's crop.
  for size in ((9, 9), (64, 48), (473, 473)):
    x = jax.ShapeDtypeStruct((1, *size, 3), jnp.float32)
    logits, variables = jax.eval_shape(
        lambda x: model.init_with_output(jax.random.key(0), x, train=False), x)
    assert logits.shape == (1, *size, 7) and logits.dtype == jnp.float32
    shapes[size] = jax.tree.map(lambda a: (a.shape, a.dtype), variables)
  assert shapes[(9, 9)] == shapes[(64, 48)] == shapes[(473, 473)]
