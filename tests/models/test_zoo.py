"""Every registry entry: builds from its config block, keeps its parameter shapes across input sizes, returns
logits of the input's size (valid-conv nets: their documented output size) and trains one step on 8 devices.

The published widths of the VGG/ResNet nets (up to 252 M parameters) replicated over 8 simulated CPU devices
with Adam states would need tens of GiB, so the step test uses each model's width options at a small setting;
the published sizes are covered by the parameter-count tests of each family's test file (jax.eval_shape).
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax import experiment, losses, models, sharding
from segjax.data import augment, pipeline
from segjax.training import steps
from tests.conftest import predict_logits, tiny_config

# Constructor options that make one step cheap on CPU. Every registry entry must be listed.
NARROW_VGG = ((4, 2), (8, 2), (8, 3), (16, 3), (16, 3))  # VGG16's 13 convs at 1/16 .. 1/32 of the width
SMALL: dict[str, dict] = {
    "patch_classifier": dict(patch_size=15, features=(4, 4), kernel_sizes=(3, 3), hidden=8, stride=2),
    "fcn_nearest": dict(base_features=4),
    "fcn_skip_concat": dict(base_features=4, upsample="bilinear"),
    "fcn_transposed_skip": dict(base_features=4),
    "fcn32s": dict(stages=NARROW_VGG, fc_features=16),
    "fcn16s": dict(stages=NARROW_VGG, fc_features=16),
    "fcn8s": dict(stages=NARROW_VGG, fc_features=16, learn_upsampling=True),
    "segnet": dict(base_features=4),
    "segnet_basic": dict(features=8, kernel_size=3),
    "deconvnet": dict(base_features=4, fc_features=16),
    "unet": dict(depth=2, base_features=8),
    "unet_valid": dict(depth=2, base_features=4),
    "unet_vgg16": dict(num_filters=4),
    "deeplab_largefov": dict(stages=NARROW_VGG, fc_features=16),
    "dilated_context": dict(stages=NARROW_VGG, fc_features=16, context="large"),
    "pspnet": dict(width=4, stem_width=4),
    "tied_conv_deconv": dict(spec="C8k5s2-C8k5s2"),
    "deeplabv3": dict(width=4, stem_width=4),
    "deeplabv3plus": dict(width=4, stem_width=4),
    "smp_unet": dict(encoder="resnet18", encoder_width=8, decoder_channels=(16, 8, 8, 8, 8)),
    "smp_fpn": dict(encoder="resnet18", encoder_width=8, pyramid_channels=16, segmentation_channels=8, gn_groups=4),
}
# Input sizes (height, width) checked for every model; valid-conv nets map each to their next valid input.
SIZES = [(32, 32), (64, 96)]
NUM_CLASSES = 5


def test_every_model_has_a_small_setting():
  assert set(SMALL) == set(models.MODELS)


def _input_size(model, h, w):
  if models.is_valid_conv(model):
    return model.input_size_for(h), model.input_size_for(w)
  d = models.size_divisor(model)
  m = models.init_size(model)
  return max(-(-h // d) * d, m), max(-(-w // d) * d, m)


def _build(name):
  return models.build_model(name, NUM_CLASSES, **SMALL[name])


def _experiment(model, crop, devices=None, optimizer="adam", learning_rate=1e-3, seed=0):
  """The Experiment that trains `model` on `crop`-sized batches: images normalised by (x - 127.5) / 127.5, plain
  cross-entropy, no augmentation, a constant learning rate from the first step. No data is read."""
  config = tiny_config("unused", **{"dataset.crop_size": crop, "optimizer.name": optimizer,
                                    "optimizer.learning_rate": learning_rate, "optimizer.schedule": "constant",
                                    "optimizer.warmup_steps": 0, "optimizer.weight_decay": 0.0,
                                    "optimizer.momentum": 0.0, "loss.ce_weight": 1.0, "loss.dice_weight": 0.0,
                                    "seed": seed, "augment": augment.config_block()})
  exp = experiment.build(config, devices, model=model)
  assert exp.mean == (127.5,) and exp.std == (127.5,) and exp.normalization == "mean_std"
  return exp


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_config_block_round_trips(name):
  block = models.model_config(name, **SMALL[name])
  model = models.build_model(name, NUM_CLASSES, **models.model_kwargs(block))
  assert model == _build(name)


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_shapes_over_input_sizes(name):
  model = _build(name)
  param_shapes = []
  for h, w in SIZES:
    h, w = _input_size(model, h, w)
    x = jax.ShapeDtypeStruct((2, h, w, 3), jnp.float32)
    variables = jax.eval_shape(functools.partial(model.init, train=False),
                               {"params": jax.random.key(0), "dropout": jax.random.key(1)}, x)
    logits = jax.eval_shape(functools.partial(model.apply, train=False), variables, x)
    expected = (2, models.output_size(model, h), models.output_size(model, w), NUM_CLASSES)
    assert logits.shape == expected and logits.dtype == jnp.float32, (name, h, w)
    param_shapes.append(jax.tree.map(lambda a: a.shape, variables["params"]))
  assert all(p == param_shapes[0] for p in param_shapes)


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_one_train_step_on_8_devices(name):
  assert jax.device_count() == 8
  model = _build(name)
  h, w = _input_size(model, 32, 48)
  exp = _experiment(model, (h, w))
  assert exp.mesh.size == 8
  state = exp.init_state()
  rng = np.random.default_rng(0)
  batch = {"image": rng.integers(0, 256, (8, h, w, 3), dtype=np.uint8),
           "label": rng.integers(0, NUM_CLASSES, (8, h, w)).astype(np.int32),
           "weight": np.ones((8, h, w), np.float32)}
  batch = pipeline.to_global(batch, sharding.batch_sharding(exp.mesh))
  before = jax.tree.map(np.asarray, state.params)
  step = steps.jit_train_step(exp)
  new_state, out = step(state, batch)
  assert np.isfinite(float(out["loss"])) and float(out["grad_norm"]) > 0
  assert int(new_state.step) == 1
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, np.asarray(b)), before, new_state.params)
  assert any(jax.tree.leaves(changed))
  chex.assert_trees_all_equal_shapes(before, new_state.params)


def test_aux_head_loss_is_added_with_its_weight():
  model = _build("pspnet")
  exp = _experiment(model, (24, 24), jax.devices()[:1], optimizer="sgd", learning_rate=0.1, seed=3)
  assert exp.settings.loss.aux_weight == 0.4
  state = exp.init_state()
  rng = np.random.default_rng(1)
  batch = {"image": rng.integers(0, 256, (2, 24, 24, 3), dtype=np.uint8),
           "label": rng.integers(0, NUM_CLASSES, (2, 24, 24)).astype(np.int32),
           "weight": (rng.random((2, 24, 24)) > 0.2).astype(np.float32)}
  # Jitted: op-by-op execution of a 50-layer net is what made this test slow, not the arithmetic.
  _, out = jax.jit(functools.partial(steps.train_step, exp=exp))(state, batch)
  # Independent recomputation: the same forward pass (same dropout key) with the aux collection exposed.
  key = jax.random.split(jax.random.fold_in(jax.random.key(3), 0))[1]
  apply = jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats", "aux"]))
  x = (batch["image"].astype(np.float32) - 127.5) / 127.5
  logits, updates = apply({"params": state.params, "batch_stats": state.batch_stats}, x, rngs={"dropout": key})
  (aux_logits,) = updates["aux"]["logits"]
  main = losses.cross_entropy(logits, batch["label"], batch["weight"])
  aux = losses.cross_entropy(aux_logits, batch["label"], batch["weight"])
  np.testing.assert_allclose(out["main_loss"], main, rtol=1e-5)
  np.testing.assert_allclose(out["loss"], main + 0.4 * aux, rtol=1e-5)
  assert abs(float(aux) - float(main)) > 1e-4  # the two heads really differ


def test_valid_conv_training_crops_labels_and_inference_mirror_pads():
  model = _build("unet_valid")  # depth 2: 20 pixels lost at each border
  margin = model.input_margin
  h, w = 20, 28
  side = model.input_size_for(8)
  exp = _experiment(model, (side, side), jax.devices()[:1], optimizer="sgd", learning_rate=0.1)
  state = exp.init_state()
  rng = np.random.default_rng(2)
  images = rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8)
  logits = jax.jit(functools.partial(predict_logits, model=model, mean=(127.5,), std=(127.5,)))(state, images)
  assert logits.shape == (2, h, w, NUM_CLASSES)
  # Reference: numpy mirror padding (reflect about the border pixel, as the U-Net paper's Fig. 2) to the
  # next valid input size, the model applied once, the top-left h x w of its output.
  x = (images.astype(np.float32) - 127.5) / 127.5
  size_h, size_w = model.input_size_for(h), model.input_size_for(w)
  rows = np.abs(np.arange(size_h) - margin)
  rows = np.where(rows > h - 1, 2 * (h - 1) - rows, rows)
  cols = np.abs(np.arange(size_w) - margin)
  cols = np.where(cols > w - 1, 2 * (w - 1) - cols, cols)
  padded = x[:, rows][:, :, cols]
  ref = jax.jit(functools.partial(model.apply, train=False))({"params": state.params}, padded)[:, :h, :w]
  np.testing.assert_allclose(logits, ref, rtol=1e-4, atol=2e-4)  # XLA conv summation order

  # Training on a valid crop: the loss covers exactly the centre output region of the labels.
  out_side = model.output_size(side)
  labels = rng.integers(0, NUM_CLASSES, (2, side, side)).astype(np.int32)
  weight = np.zeros((2, side, side), np.float32)
  batch = {"image": rng.integers(0, 256, (2, side, side, 3), dtype=np.uint8), "label": labels, "weight": weight}
  train_step = jax.jit(functools.partial(steps.train_step, exp=exp))
  _, out = train_step(state, batch)
  assert float(out["loss"]) == 0.0  # nothing weighted
  m = (side - out_side) // 2
  weight[:, m:m + out_side, m:m + out_side] = 1.0
  _, inside = train_step(state, dict(batch, weight=weight.copy()))
  weight[:, m:m + out_side, m:m + out_side] = 0.0
  weight[:, :m] = 1.0  # only the border the output does not cover
  _, border = train_step(state, dict(batch, weight=weight))
  assert float(inside["loss"]) > 0.0 and float(border["loss"]) == 0.0


@pytest.mark.parametrize("method", ["unpool", "bed_of_nails", "nearest", "bilinear", "learned", "transpose",
                                    "transpose_bilinear"])
def test_segnet_decoder_upsampling_is_selectable(method):
  model = models.build_model("segnet_basic", NUM_CLASSES, features=4, kernel_size=3, upsample=method)
  x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 13, 11, 3)), jnp.float32)
  with jax.threefry_partitionable(False):
    variables = model.init(jax.random.key(0), x, train=False)
  logits, state = model.apply(variables, x, train=False, mutable=["intermediates"])
  assert logits.shape == (1, 13, 11, NUM_CLASSES)
  pooled = np.asarray(state["intermediates"]["pre_pool4"][0])  # [1, 2, 2, 4] before the last pooling
  up = np.asarray(state["intermediates"]["unpool4"][0])  # the first decoder stage's upsampled map, 2x2
  small = np.asarray(jax.lax.reduce_window(jnp.asarray(pooled), -jnp.inf, jax.lax.max, (1, 2, 2, 1),
                                           (1, 2, 2, 1), "VALID"))  # 1x1 bottleneck, numpy-independent max
  if method == "unpool":  # the maximum back at its own position, zeros elsewhere
    np.testing.assert_array_equal(up, np.where(pooled == small, pooled, 0.0))
  elif method in ("bed_of_nails", "learned"):  # learned starts as bed-of-nails: top-left of each block
    expected = np.zeros_like(up)
    expected[:, 0, 0] = small[:, 0, 0]
    np.testing.assert_allclose(up, expected, rtol=1e-6)
  elif method in ("nearest", "bilinear"):  # a 1x1 map upsampled either way is constant
    np.testing.assert_allclose(up, np.broadcast_to(small, up.shape), rtol=1e-6)
  else:
    assert up.shape == pooled.shape


def test_unet_decoder_upsampling_is_selectable():
  from segjax.models.unet import UNET_UPSAMPLING
  x = jax.ShapeDtypeStruct((2, 16, 24, 3), jnp.float32)
  counts = {}
  for method in UNET_UPSAMPLING:
    model = models.build_model("unet", NUM_CLASSES, depth=2, base_features=4, upsample=method)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
    assert jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x).shape == (2, 16, 24, 5)
    counts[method] = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(variables["params"]))
  # Parameter-free upsampling + 3x3 conv halving channels; "learned" adds a 2x2 kernel per channel per level.
  assert counts["nearest"] == counts["bilinear"] == counts["bed_of_nails"]
  assert counts["learned"] - counts["nearest"] == 2 * 2 * (16 + 8)
  assert counts["transpose"] != counts["nearest"]
