"""Loading into a model (segjax.weights.load) and the recipe path (config.init_from -> Experiment.init_state):
the backbone's arrays come from the file, the rest is reported, and every mismatch names the file, the key, both
shapes and the fix."""

import jax
import numpy as np
import pytest

from segjax import experiment, weights
from segjax.models.backbones.vgg import VGG16
from tests.weights.references import (NARROW, abstract_variables, deeplab_config, init_from, narrow_vgg_file,
                                      save_state)


def test_recipe_initialises_the_backbone_from_the_file(tmp_path, caplog):
  path, state = narrow_vgg_file(tmp_path / "vgg16.pth")
  exp = experiment.build(deeplab_config(path))
  # The normalisation follows the weights in training, eval and predict alike (no file read for it).
  np.testing.assert_allclose(exp.mean, (123.675, 116.28, 103.53))
  np.testing.assert_allclose(exp.std, (58.395, 57.12, 57.375))
  with caplog.at_level("INFO", logger="segjax.experiment"):
    loaded = exp.init_state()
  assert "left at initialisation (in ['fc6', 'fc7', 'fc8'])" in caplog.text

  backbone = loaded.params["backbone"]
  convs = [k for k in state if k.endswith(".weight")]
  names = [f"conv{s}_{i}" for s, (_, n) in enumerate(NARROW, start=1) for i in range(1, n + 1)]
  assert len(convs) == len(names) == 13
  for key, name in zip(convs, names):
    np.testing.assert_array_equal(backbone[name]["kernel"], state[key].numpy().transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(backbone[name]["bias"], state[key.replace("weight", "bias")].numpy())
  # Placed like a fresh state, so the jitted steps take it.
  for leaf, sharding in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(exp.state_sharding.params)):
    assert leaf.sharding == sharding


def test_recipe_errors_name_file_key_shapes_and_fix(tmp_path):
  wide, _ = narrow_vgg_file(tmp_path / "wide.pth", widths=((6, 2), (8, 2), (8, 3), (8, 3), (8, 3)))
  exp = experiment.build(deeplab_config(wide))
  with pytest.raises(ValueError, match=r"wide\.pth: features\.0\.weight has shape \(6, 3, 3, 3\) .*\(3, 3, 3, 6\).*"
                                       r"'backbone/conv1_1/kernel' has shape \(3, 3, 3, 4\)\. Use weights"):
    exp.init_state()

  torch = pytest.importorskip("torch")
  resnet_like = save_state({"conv1.weight": torch.zeros(4, 3, 7, 7), "layer1.0.conv1.weight": torch.zeros(4, 4, 1, 1)},
                           tmp_path / "resnet.pth")
  with pytest.raises(ValueError, match=r"holds resnet\? ?.*weights, but .*vgg16 backbone"):
    experiment.build(deeplab_config(resnet_like)).init_state()

  missing = tmp_path / "nowhere.h5"
  exp = experiment.build(deeplab_config(missing))
  exp.abstract_state()  # restoring a checkpoint never reads the file
  assert exp.mean == weights.CAFFE_MEAN_RGB and exp.std == (1.0, 1.0, 1.0)
  with pytest.raises(FileNotFoundError, match=r"config\.init_from\.path=.*nowhere\.h5.*no such file"):
    exp.init_state()


def test_grayscale_dataset_sums_the_first_convolution(tmp_path):
  path, state = narrow_vgg_file(tmp_path / "vgg16.pth")
  exp = experiment.build(deeplab_config(path, dataset="isbi2012"))
  assert exp.spec.num_channels == 1
  np.testing.assert_allclose(exp.mean, (np.mean((123.675, 116.28, 103.53)),))
  np.testing.assert_allclose(exp.std, (np.mean((58.395, 57.12, 57.375)),))
  shapes = exp.abstract_state()
  params, _, _ = weights.load_into(shapes.params, shapes.batch_stats, exp.config.init_from, exp.model)
  np.testing.assert_allclose(params["backbone"]["conv1_1"]["kernel"],
                             state["features.0.weight"].numpy().transpose(2, 3, 1, 0).sum(2, keepdims=True),
                             rtol=1e-6)


def test_vgg16_file_initialises_the_convolutions_of_a_vgg16_bn_encoder(tmp_path):
  """SegNet's initialisation: plain VGG16 weights under BatchNorm layers, asked for with architecture='vgg16'."""
  path, state = narrow_vgg_file(tmp_path / "vgg16.pth")
  net = VGG16(batch_norm=True, stages=NARROW)
  shapes = abstract_variables(net, 32)
  with pytest.raises(ValueError, match=r"holds vgg16 weights, but VGG16's params\['\(root\)'\] is a vgg16_bn"):
    weights.load_into(shapes["params"], shapes["batch_stats"], init_from(path), net)
  params, stats, report = weights.load_into(shapes["params"], shapes["batch_stats"],
                                            init_from(path, architecture="vgg16"), net)
  np.testing.assert_array_equal(params["conv5_3"]["bias"], state["features.28.bias"].numpy())
  assert isinstance(params["bn5_3"]["scale"], jax.ShapeDtypeStruct)  # left as it was
  assert stats is shapes["batch_stats"] or all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(stats))
  assert report.num_left_at_init == 2 * (4 + 4 + 8 * 11)  # BN scale and bias
