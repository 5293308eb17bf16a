"""DeepLabV3 and DeepLabV3+: parameter counts equal torchvision's deeplabv3_resnet50/101 and SMP's DeepLabV3Plus
(both built here, no download), output shapes over input sizes, the auxiliary head sown in training only, the
backbone filled from a torchvision ResNet-50 file through `init_from`, the same logits as torchvision's and SMP's
networks given their weights, and one training step on 8 devices equal to one on 1 device.

Full-width networks are only traced (`jax.eval_shape`) except in the two forward comparisons, which run one
small image through ResNet-50 on each side.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax import experiment, models, sharding
from segjax.data import augment, pipeline
from segjax.models.deeplabv3 import DeepLabV3, DeepLabV3Plus
from segjax.training import steps
from segjax.weights.load import load_into
from tests.conftest import import_torchvision, tiny_config
from tests.models.common import abstract_variables, assert_config_fields_and_float32, count_params

RESNET50_NO_FC = 23_508_032  # torchvision resnet50() without its 1000-way fc (25,557,032 - 2048 * 1000 - 1000)


def _torch():
  """(torchvision, segmentation_models_pytorch, torch); torchvision imported first, through the CUDA-build
  workaround of tests/conftest.py."""
  tv = import_torchvision()
  smp = pytest.importorskip("segmentation_models_pytorch")
  import torch  # pylint: disable=import-outside-toplevel
  return tv, smp, torch


def _torch_count(net) -> int:
  return sum(p.numel() for p in net.parameters())  # BN running statistics are buffers, not parameters


def _count(model, size=33):
  return count_params(abstract_variables(model, (1, size, size, 3))["params"])


def deeplabv3_param_count(num_classes, depth=50, aux=True):
  """Written out from torchvision's DeepLabHead / FCNHead: ASPP 1x1 + 3 x 3x3 + pooling 1x1 (2048 -> 256, BN each),
  projection 1280 -> 256 + BN, 3x3 256 -> 256 + BN, 1x1 256 -> K with bias; aux 3x3 1024 -> 256 + BN, 1x1 -> K."""
  backbone = {50: RESNET50_NO_FC, 101: 42_500_160}[depth]
  aspp = 2 * (2048 * 256 + 512) + 3 * (9 * 2048 * 256 + 512) + 1280 * 256 + 512
  head = 9 * 256 * 256 + 512 + 256 * num_classes + num_classes
  aux_head = 9 * 1024 * 256 + 512 + 256 * num_classes + num_classes
  return backbone + aspp + head + (aux_head if aux else 0)


@pytest.mark.parametrize("num_classes,depth,expected", [
    (21, 50, 42_004_074),   # torchvision's DeepLabV3_ResNet50_Weights meta["num_params"]
    (21, 101, 60_996_202),  # DeepLabV3_ResNet101_Weights
    (11, 50, 41_998_934),
])
def test_deeplabv3_parameter_count_equals_torchvision(num_classes, depth, expected):
  tv, _, _ = _torch()
  net = getattr(tv.models.segmentation, f"deeplabv3_resnet{depth}")(
      weights=None, weights_backbone=None, aux_loss=True, num_classes=num_classes)
  assert _count(DeepLabV3(num_classes, depth=depth)) == _torch_count(net) == expected
  assert expected == deeplabv3_param_count(num_classes, depth)
  # Output stride and rates change no shape.
  assert _count(DeepLabV3(num_classes, depth=depth, output_stride=16)) == expected
  assert _count(DeepLabV3(num_classes, depth=depth, aux_head=False)) == deeplabv3_param_count(num_classes, depth,
                                                                                               aux=False)


@pytest.mark.parametrize("num_classes,depth,expected", [(1, 50, 26_677_585), (12, 50, 26_680_412),
                                                        (12, 101, 45_672_540)])
def test_deeplabv3plus_parameter_count_equals_smp(num_classes, depth, expected):
  _, smp, _ = _torch()
  net = smp.DeepLabV3Plus(f"resnet{depth}", encoder_weights=None, classes=num_classes)
  assert _count(DeepLabV3Plus(num_classes, depth=depth), 64) == _torch_count(net) == expected
  assert _count(DeepLabV3Plus(num_classes, depth=depth, output_stride=8, atrous_rates=(12, 24, 36)), 64) == expected


@pytest.mark.parametrize("cls", [DeepLabV3, DeepLabV3Plus])
def test_shapes_over_input_sizes_and_aux_in_training_only(cls):
  model = cls(5, width=4, stem_width=4, dtype=jnp.bfloat16)  # float32 logits whatever the compute dtype
  shapes = []
  for size in ((32, 48), (45, 61)):  # a multiple of 16 and odd sides (the module takes any size)
    x = jax.ShapeDtypeStruct((2, *size, 3), jnp.float32)
    variables = abstract_variables(model, x)
    train_out, train_state = jax.eval_shape(
        lambda v, x: model.apply(v, x, train=True, rngs={"dropout": jax.random.key(0)},
                                 mutable=["batch_stats", "aux"]), variables, x)
    eval_out, eval_state = jax.eval_shape(lambda v, x: model.apply(v, x, train=False, mutable=["aux"]), variables, x)
    for out in (train_out, eval_out):
      assert out.shape == (2, *size, 5) and out.dtype == jnp.float32
    assert "aux" not in eval_state
    if cls is DeepLabV3:
      (aux,) = train_state["aux"]["logits"]
      assert aux.shape == (2, *size, 5) and aux.dtype == jnp.float32
    else:
      assert "aux" not in train_state
    shapes.append(jax.tree.map(lambda a: (a.shape, a.dtype), variables))
  assert shapes[0] == shapes[1]
  assert models.build_model(cls.__name__.lower(), 5) == cls(5)


@pytest.mark.parametrize("cls", [DeepLabV3, DeepLabV3Plus])
def test_config_fields_and_float32_parameters(cls):
  assert_config_fields_and_float32(cls, (1, 32, 32, 3))
  block = models.model_config(cls.__name__.lower(), width=4, stem_width=4, atrous_rates=(3, 6, 9))
  assert models.build_model(block.name, 5, **models.model_kwargs(block)) == cls(5, width=4, stem_width=4,
                                                                                atrous_rates=(3, 6, 9))


def test_bad_options_are_errors():
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  with pytest.raises(ValueError, match="output_stride must be 8 or 16"):
    abstract_variables(DeepLabV3(3, output_stride=32), x)
  with pytest.raises(ValueError, match="three positive dilations"):
    abstract_variables(DeepLabV3Plus(3, atrous_rates=(6, 12)), x)


# ---------------------------------------------------------------------------------------------- torch references


def _randomize(net, torch, seed=0):
  """Random BN statistics and affine parameters (and biases) so that every mapped array matters; eval mode."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.normal_(0, 0.1, generator=g)
        m.running_var.uniform_(0.5, 2.0, generator=g)
        m.weight.uniform_(0.3, 1.0, generator=g)
        m.bias.normal_(0, 0.1, generator=g)
      elif isinstance(m, torch.nn.Conv2d) and m.bias is not None:
        m.bias.normal_(0, 0.1, generator=g)
  return net.eval()


def _put(params, stats, path, module, state):
  """Copies a torch Conv2d's or BatchNorm2d's arrays from `state` (prefix `module`) to the flax `path`."""
  def node(tree):
    for key in path:
      tree = tree.setdefault(key, {})
    return tree
  w = state[f"{module}.weight"].numpy()
  if f"{module}.running_mean" in state:
    node(params).update(scale=w, bias=state[f"{module}.bias"].numpy())
    node(stats).update(mean=state[f"{module}.running_mean"].numpy(), var=state[f"{module}.running_var"].numpy())
    return
  node(params)["kernel"] = w.transpose(2, 3, 1, 0)  # OIHW -> HWIO (depthwise: [k, k, 1, C], Flax's grouping)
  if f"{module}.bias" in state:
    node(params)["bias"] = state[f"{module}.bias"].numpy()


def _backbone_from_file(model, backbone_state, tmp_path, torch, tv, depth=50):
  """The model's variables with the backbone loaded by `init_from` from a torchvision ResNet file (fc included,
  as the ImageNet download) holding `backbone_state`; the heads are left for the caller."""
  resnet = getattr(tv.models, f"resnet{depth}")()
  resnet.load_state_dict(backbone_state, strict=False)
  path = tmp_path / "resnet.pth"
  torch.save(resnet.state_dict(), path)
  shapes = abstract_variables(model, (1, 64, 64, 3))
  init_from = dict(path=str(path), format="auto", architecture="auto", target="auto")
  import ml_collections  # pylint: disable=import-outside-toplevel
  params, stats, report = load_into(shapes["params"], shapes["batch_stats"], ml_collections.ConfigDict(init_from),
                                    model)
  assert report.target == "backbone" and report.architecture == f"resnet{depth}"
  assert report.num_loaded == RESNET50_NO_FC
  assert not any(p.startswith("backbone/") for p in report.left_at_init)
  assert sorted(report.ignored) == ["fc.bias", "fc.weight"]
  keep = lambda tree: {k: v for k, v in tree.items() if k == "backbone"}  # noqa: E731
  return keep(params), keep(stats), report


def _compare(ours, theirs):
  scale = float(np.abs(theirs).max())
  assert scale > 1e-2, "degenerate reference output"
  np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=2e-4 * scale)


def test_deeplabv3_equals_torchvision_with_its_weights(tmp_path):
  tv, _, torch = _torch()
  torch.manual_seed(0)
  net = _randomize(tv.models.segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None, aux_loss=True,
                                                               num_classes=5), torch)
  model = DeepLabV3(5)
  params, stats, report = _backbone_from_file(model, net.backbone.state_dict(), tmp_path, torch, tv)
  assert {p.split("/")[0] for p in report.left_at_init} == {"aspp", "head_conv", "head_bn", "classifier", "aux_conv",
                                                            "aux_bn", "aux_classifier"}
  head = {k: v for k, v in net.state_dict().items() if not k.startswith("backbone.")}
  names = {"classifier.0.project.0": ("aspp", "project"), "classifier.0.project.1": ("aspp", "project_bn"),
           "classifier.0.convs.4.1": ("aspp", "pool_conv"), "classifier.0.convs.4.2": ("aspp", "pool_bn"),
           "classifier.1": ("head_conv",), "classifier.2": ("head_bn",), "classifier.4": ("classifier",),
           "aux_classifier.0": ("aux_conv",), "aux_classifier.1": ("aux_bn",), "aux_classifier.4": ("aux_classifier",)}
  for i in range(4):
    names[f"classifier.0.convs.{i}.0"], names[f"classifier.0.convs.{i}.1"] = ("aspp", f"conv{i}"), ("aspp", f"bn{i}")
  for module, path in names.items():
    _put(params, stats, path, module, head)
  assert count_params(params) == _torch_count(net)

  images = np.random.default_rng(0).standard_normal((2, 3, 45, 61)).astype(np.float32)  # odd sides
  with torch.no_grad():
    expected = net(torch.from_numpy(images))["out"].numpy().transpose(0, 2, 3, 1)
  x = images.transpose(0, 2, 3, 1)
  logits = jax.jit(functools.partial(model.apply, train=False))({"params": params, "batch_stats": stats}, x)
  _compare(np.asarray(logits), expected)

  # Training mode (batch statistics) without dropout: main and auxiliary logits both equal torchvision's.
  no_dropout = DeepLabV3(5, dropout_rate=0.0, aux_dropout_rate=0.0)
  (logits, state) = jax.jit(functools.partial(no_dropout.apply, train=True, mutable=["batch_stats", "aux"]))(
      {"params": params, "batch_stats": stats}, x)
  for m in net.modules():
    if isinstance(m, torch.nn.Dropout):
      m.p = 0.0
  with torch.no_grad():
    out = net.train()(torch.from_numpy(images))
  _compare(np.asarray(logits), out["out"].numpy().transpose(0, 2, 3, 1))
  _compare(np.asarray(state["aux"]["logits"][0]), out["aux"].numpy().transpose(0, 2, 3, 1))


def test_deeplabv3plus_equals_smp_with_its_weights(tmp_path):
  tv, smp, torch = _torch()
  torch.manual_seed(0)
  net = _randomize(smp.DeepLabV3Plus("resnet50", encoder_weights=None, classes=5), torch)
  model = DeepLabV3Plus(5, atrous_rates=(12, 24, 36))  # SMP's default rates
  encoder = {k[len("encoder."):]: v for k, v in net.state_dict().items() if k.startswith("encoder.")}
  params, stats, _ = _backbone_from_file(model, encoder, tmp_path, torch, tv)
  head = net.state_dict()
  names = {"decoder.aspp.0.project.0": ("aspp", "project"), "decoder.aspp.0.project.1": ("aspp", "project_bn"),
           "decoder.aspp.0.convs.0.0": ("aspp", "conv0"), "decoder.aspp.0.convs.0.1": ("aspp", "bn0"),
           "decoder.aspp.0.convs.4.1": ("aspp", "pool_conv"), "decoder.aspp.0.convs.4.2": ("aspp", "pool_bn"),
           "decoder.aspp.1.0": ("aspp_conv", "depthwise"), "decoder.aspp.1.1": ("aspp_conv", "pointwise"),
           "decoder.aspp.2": ("aspp_bn",), "decoder.block1.0": ("low_conv",), "decoder.block1.1": ("low_bn",),
           "decoder.block2.0.0": ("fuse_conv", "depthwise"), "decoder.block2.0.1": ("fuse_conv", "pointwise"),
           "decoder.block2.1": ("fuse_bn",), "segmentation_head.0": ("classifier",)}
  for i in range(1, 4):
    names[f"decoder.aspp.0.convs.{i}.0.0"] = ("aspp", f"conv{i}", "depthwise")
    names[f"decoder.aspp.0.convs.{i}.0.1"] = ("aspp", f"conv{i}", "pointwise")
    names[f"decoder.aspp.0.convs.{i}.1"] = ("aspp", f"bn{i}")
  for module, path in names.items():
    _put(params, stats, path, module, head)
  assert count_params(params) == _torch_count(net)

  images = np.random.default_rng(0).standard_normal((2, 3, 64, 96)).astype(np.float32)  # multiples of 16 (SMP)
  with torch.no_grad():
    expected = net(torch.from_numpy(images)).numpy().transpose(0, 2, 3, 1)
  logits = jax.jit(functools.partial(model.apply, train=False))({"params": params, "batch_stats": stats},
                                                                images.transpose(0, 2, 3, 1))
  _compare(np.asarray(logits), expected)


# ---------------------------------------------------------------------------------------------- sharded step


def _one_step(model, devices, batch):
  config = tiny_config("unused", **{"dataset.crop_size": batch["image"].shape[1:3], "optimizer.name": "sgd",
                                    "optimizer.learning_rate": 0.1, "optimizer.schedule": "constant",
                                    "optimizer.warmup_steps": 0, "optimizer.weight_decay": 0.0,
                                    "optimizer.momentum": 0.9, "loss.ce_weight": 1.0, "loss.dice_weight": 0.0,
                                    "loss.aux_weight": 0.4, "augment": augment.config_block()})
  exp = experiment.build(config, devices, model=model)
  state = exp.init_state()
  init = jax.device_get(state.params)  # the step donates the state's buffers
  new_state, out = steps.jit_train_step(exp)(state, pipeline.to_global(batch, sharding.batch_sharding(exp.mesh)))
  return jax.device_get((new_state.params, new_state.batch_stats, out)) + (init,)


# DeepLabV3+ shares the backbone and ASPP; its two compilations take ~1.5 min on 2 loaded cores.
@pytest.mark.parametrize("cls", [DeepLabV3, pytest.param(DeepLabV3Plus, marks=pytest.mark.slow)])
def test_one_step_on_8_devices_equals_1_device(cls):
  assert jax.device_count() == 8
  # Dropout on (ASPP 0.5, aux 0.1): the per-example keys must give the same masks however the batch is split.
  model = cls(5, width=4, stem_width=4)
  rng = np.random.default_rng(0)
  batch = {"image": rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8),
           "label": rng.integers(0, 5, (8, 32, 32)).astype(np.int32),
           "weight": np.ones((8, 32, 32), np.float32)}
  p1, s1, m1, init = _one_step(model, jax.devices()[:1], batch)
  p8, s8, m8, _ = _one_step(model, jax.devices(), batch)
  np.testing.assert_allclose(m1["loss"], m8["loss"], rtol=1e-5, atol=1e-6)
  if cls is DeepLabV3:
    assert float(m1["loss"]) > float(m1["main_loss"])  # the auxiliary loss is added
  chex.assert_trees_all_close(p1, p8, rtol=1e-5, atol=1e-5)
  # BatchNorm statistics are over the global batch. Layer4 of an untrained ResNet-50 has activations of variance
  # ~20, whose variance (E[x^2] - E[x]^2) summed in another order differs by up to 3e-5 relative (measured for
  # DeepLabV3+'s ASPP BN); a per-device statistic would differ by far more.
  chex.assert_trees_all_close(s1, s8, rtol=1e-4, atol=1e-5)
  assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(init), jax.tree.leaves(p1)))
