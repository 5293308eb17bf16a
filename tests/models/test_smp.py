"""SMP's Unet and FPN (segjax.models.smp): parameter counts equal to segmentation_models_pytorch 0.6's, logits of
the input's size, SMP's weights converted computing SMP's logits, and one training step on 8 devices equal to
one on 1 device."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax import experiment, models, sharding
from segjax.data import augment, pipeline
from segjax.models import smp as smp_lib
from segjax.training import steps
from tests.conftest import import_torchvision, tiny_config
from tests.models.common import abstract_apply, abstract_variables, count_params

# segmentation_models_pytorch 0.6.0: sum(p.numel() for p in Unet/FPN(enc, encoder_weights=None, classes=1)
# .parameters()), measured on this machine (BatchNorm running statistics are buffers, not parameters).
SMP_COUNTS = {
    ("smp_unet", "resnet18"): 14_328_209, ("smp_unet", "resnet34"): 24_436_369, ("smp_unet", "resnet50"): 32_521_105,
    ("smp_fpn", "resnet18"): 13_047_233, ("smp_fpn", "resnet34"): 23_155_393, ("smp_fpn", "resnet50"): 26_116_033,
}
# Narrow settings for real forward passes and training steps on the CPU.
SMALL = {"smp_unet": dict(encoder="resnet18", encoder_width=8, decoder_channels=(16, 8, 8, 8, 8)),
         "smp_fpn": dict(encoder="resnet18", encoder_width=8, pyramid_channels=16, segmentation_channels=8,
                         gn_groups=4)}


@pytest.mark.parametrize("name,encoder", sorted(SMP_COUNTS))
def test_parameter_count_equals_smps(name, encoder):
  model = models.build_model(name, 1, encoder=encoder)
  assert count_params(abstract_variables(model, (1, 64, 64, 3))["params"]) == SMP_COUNTS[(name, encoder)]


def test_parameter_count_grows_by_the_head_per_class():
  # Unet's head is a 3x3 convolution from 16 channels, FPN's a 1x1 from 128: 9 * 16 + 1 and 128 + 1 per class.
  for name, per_class in (("smp_unet", 145), ("smp_fpn", 129)):
    counts = [count_params(abstract_variables(models.build_model(name, k, encoder="resnet18"), (1, 32, 32, 3))
                           ["params"]) for k in (1, 11)]
    assert counts[1] - counts[0] == 10 * per_class, name


@pytest.mark.parametrize("name", ["smp_unet", "smp_fpn"])
@pytest.mark.parametrize("encoder", ["resnet34", "resnet50"])
def test_logits_have_the_input_size(name, encoder):
  model = models.build_model(name, 11, encoder=encoder)
  shapes = []
  for h, w in ((64, 96), (352, 480)):
    variables, logits = abstract_apply(model, (2, h, w, 3))
    assert logits.shape == (2, h, w, 11) and logits.dtype == jnp.float32
    shapes.append(jax.tree.map(lambda a: a.shape, variables["params"]))
  assert shapes[0] == shapes[1]


def test_bad_inputs_and_options_are_refused():
  with pytest.raises(ValueError, match="divisible by 32"):
    abstract_variables(models.build_model("smp_unet", 2), (1, 48, 64, 3))
  with pytest.raises(ValueError, match="encoder must be one of"):
    abstract_variables(models.build_model("smp_fpn", 2, encoder="resnet101"), (1, 64, 64, 3))
  with pytest.raises(ValueError, match="5 decoder_channels"):
    abstract_variables(models.build_model("smp_unet", 2, decoder_channels=(8, 8)), (1, 64, 64, 3))


def _smp_model(name, encoder, classes):
  """An SMP model with random weights and non-trivial BatchNorm statistics, in eval mode."""
  import_torchvision()  # the CPU-torch workaround must come before segmentation_models_pytorch imports torchvision
  import torch  # pylint: disable=import-outside-toplevel
  smp = pytest.importorskip("segmentation_models_pytorch")

  torch.manual_seed(0)
  cls = {"smp_unet": smp.Unet, "smp_fpn": smp.FPN}[name]
  net = cls(encoder, encoder_weights=None, classes=classes).eval()
  gen = torch.Generator().manual_seed(1)
  for module in net.modules():
    if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.GroupNorm)):
      n = module.weight.shape[0]
      module.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
      module.bias.data.copy_(torch.randn(n, generator=gen) * 0.1)
    if isinstance(module, torch.nn.BatchNorm2d):
      module.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
      module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
  return torch, net


@pytest.mark.parametrize("name,encoder", [("smp_unet", "resnet18"), ("smp_fpn", "resnet18"), ("smp_fpn", "resnet50")])
def test_smp_weights_compute_smps_logits(name, encoder):
  torch, net = _smp_model(name, encoder, classes=3)
  assert sum(p.numel() for p in net.parameters()) - (SMP_COUNTS[(name, encoder)]) == (
      (3 - 1) * (145 if name == "smp_unet" else 129))
  params, stats = smp_lib.convert_smp_state_dict(net.state_dict())
  model = models.build_model(name, 3, encoder=encoder)
  x = np.random.default_rng(0).standard_normal((2, 64, 96, 3)).astype(np.float32)
  abstract = abstract_variables(model, jax.ShapeDtypeStruct(x.shape, jnp.float32))
  # Every parameter and statistic has its SMP counterpart, of the same shape.
  chex.assert_trees_all_equal_shapes({"params": params, "batch_stats": stats}, abstract)
  ours = jax.jit(lambda v, x: model.apply(v, x, train=False))({"params": params, "batch_stats": stats}, x)
  with torch.no_grad():
    expected = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
  np.testing.assert_allclose(np.asarray(ours), expected, rtol=0, atol=2e-5 * np.abs(expected).max())


def _one_step(model, devices, batch):
  # Plain SGD: the update is linear in the gradient, so float32 reassociation across devices stays at rounding
  # level (Adam's first step is lr * sign(g) and turns rounding in a near-zero gradient into a full step).
  config = tiny_config("unused", **{"dataset.crop_size": batch["image"].shape[1:3], "optimizer.name": "sgd",
                                    "optimizer.learning_rate": 0.1, "optimizer.momentum": 0.0,
                                    "optimizer.schedule": "constant",
                                    "optimizer.warmup_steps": 0, "optimizer.weight_decay": 0.0,
                                    "loss.ce_weight": 1.0, "loss.dice_weight": 0.0, "seed": 0,
                                    "augment": augment.config_block()})
  exp = experiment.build(config, devices, model=model)
  state = exp.init_state()
  new_state, out = steps.jit_train_step(exp)(state, pipeline.to_global(batch, sharding.batch_sharding(exp.mesh)))
  return jax.device_get(new_state.params), jax.device_get(new_state.batch_stats), jax.device_get(out)


@pytest.mark.parametrize("name", ["smp_unet", "smp_fpn"])
def test_one_train_step_on_8_devices_equals_1_device(name):
  assert jax.device_count() == 8
  model = models.build_model(name, 5, **SMALL[name])  # FPN's channel dropout is on: the masks must agree too
  rng = np.random.default_rng(0)
  batch = {"image": rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8),
           "label": rng.integers(0, 5, (8, 32, 32)).astype(np.int32),
           "weight": np.ones((8, 32, 32), np.float32)}
  p1, s1, m1 = _one_step(model, jax.devices()[:1], batch)
  p8, s8, m8 = _one_step(model, jax.devices(), batch)
  assert np.isfinite(m1["loss"]) and float(m1["grad_norm"]) > 0
  np.testing.assert_allclose(m1["loss"], m8["loss"], rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(p1, p8, rtol=1e-5, atol=1e-5)
  chex.assert_trees_all_close(s1, s8, rtol=1e-5, atol=1e-5)  # BatchNorm statistics over the global batch
