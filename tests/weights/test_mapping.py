"""File names and layouts -> segjax (segjax.weights.mapping): Keras .h5 and torchvision .pth / .safetensors files
give segjax backbones (and FCN's fc6/fc7) that compute what Keras and torchvision compute with the same file.

The references are the frameworks themselves, offline (tests/weights/references.py).
"""

import jax
import numpy as np
import pytest

from segjax import experiment, models, weights
from segjax.models.backbones.resnet import ResNet
from segjax.models.backbones.vgg import VGG16
from tests.conftest import import_torchvision
from tests.weights.references import (KERAS_NUMPY_WARNING, NARROW, RTOL, abstract_variables, apply, deeplab_config,
                                      init_from, keras_outputs, narrow_vgg_file, nhwc, randomize_batchnorm,
                                      randomize_keras, rel_err, save_keras, save_state, torchvision_input)

pytestmark = pytest.mark.filterwarnings(KERAS_NUMPY_WARNING)


# ------------------------------------------------------------------------------------------------ Keras


def test_keras_vgg16_h5_matches_keras(tmp_path):
  keras = pytest.importorskip("keras")
  model = keras.applications.VGG16(weights=None, include_top=False, input_shape=(32, 32, 3))
  randomize_keras(model, np.random.default_rng(0))
  path = save_keras(model, tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5")
  images = np.random.default_rng(2).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
  names = [f"block{s}_{kind}" for s, n in zip(range(1, 6), (2, 2, 3, 3, 3)) for kind in (f"conv{n}", "pool")]
  expected = keras_outputs(model, names, images, keras.applications.vgg16.preprocess_input)

  net = VGG16()
  params, stats, report = weights.load_into(abstract_variables(net, 32)["params"], {}, init_from(path), net)
  assert (report.architecture, report.num_loaded, report.num_left_at_init) == ("vgg16", 14_714_688, 0)
  out = apply(net, params, stats, images, "keras_h5", "vgg16")
  for s in range(1, 6):
    for key, ref in ((f"conv{s}", expected[2 * s - 2]), (f"pool{s}", expected[2 * s - 1])):
      assert out[key].shape == ref.shape
      assert rel_err(out[key], ref) < RTOL, key


def test_keras_resnet50_h5_matches_keras(keras_resnet50):
  keras = pytest.importorskip("keras")
  model, path = keras_resnet50
  images = np.random.default_rng(3).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
  names = ["conv2_block3_out", "conv3_block4_out", "conv4_block6_out", "conv5_block3_out"]
  expected = keras_outputs(model, names, images, keras.applications.resnet50.preprocess_input)

  net = ResNet(depth=50, stride_in_1x1=True)  # ResNet v1, as Keras'
  shapes = abstract_variables(net, 64)
  params, stats, report = weights.load_into(shapes["params"], shapes["batch_stats"], init_from(path), net)
  # Keras counts 23,587,712 with the 53 convolutions' biases (79,680), folded here into the BN means.
  assert (report.architecture, report.num_loaded, report.num_left_at_init) == ("resnet50", 23_508_032, 0)
  out = apply(net, params, stats, images, "keras_h5", "resnet50")
  for i, ref in enumerate(expected, start=1):
    assert out[f"layer{i}"].shape == ref.shape
    assert rel_err(out[f"layer{i}"], ref) < RTOL, f"layer{i}"

  with pytest.raises(ValueError, match=r"stride_in_1x1=True.*ResNet has stride_in_1x1=False"):
    weights.load_into(shapes["params"], shapes["batch_stats"], init_from(path), ResNet(depth=50))


# ------------------------------------------------------------------------------------------------ torchvision


@pytest.mark.parametrize("batch_norm,suffix", [(True, ".pth"), (False, ".safetensors")], ids=["vgg16_bn", "vgg16"])
def test_torchvision_vgg16_matches_torchvision(tmp_path, batch_norm, suffix):
  torch = pytest.importorskip("torch")
  vgg = import_torchvision().models.vgg
  torch.manual_seed(0)
  # torchvision's vgg16 / vgg16_bn `features` (without the 120 M-parameter classifier: the state dict keys and
  # layers are those of vgg16(weights=None).features).
  features = randomize_batchnorm(vgg.make_layers(vgg.cfgs["D"], batch_norm=batch_norm),
                                 torch.Generator().manual_seed(1))
  state = {f"features.{k}": v for k, v in features.state_dict().items()}
  state["classifier.6.weight"] = torch.zeros(10, 4)  # a top layer, ignored
  path = save_state(state, tmp_path / f"vgg16{'_bn' if batch_norm else ''}{suffix}")
  images = np.random.default_rng(4).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
  expected, x = {}, torchvision_input(images)
  pools = [i for i, m in enumerate(features) if isinstance(m, torch.nn.MaxPool2d)]
  with torch.no_grad():
    for i, layer in enumerate(features):
      if i + 1 in pools:  # features[:i + 1] ends with the stage's last ReLU
        expected[f"conv{pools.index(i + 1) + 1}"] = nhwc(layer(x))
      x = layer(x)
      if i in pools:
        expected[f"pool{pools.index(i) + 1}"] = nhwc(x)

  net = VGG16(batch_norm=batch_norm)
  shapes = abstract_variables(net, 32)
  params, stats, report = weights.load_into(shapes["params"], shapes.get("batch_stats", {}), init_from(path), net)
  assert report.architecture == ("vgg16_bn" if batch_norm else "vgg16")
  assert report.num_left_at_init == 0 and report.ignored == ("classifier.6.weight",)
  np.testing.assert_array_equal(params["conv1_1"]["kernel"], state["features.0.weight"].numpy().transpose(2, 3, 1, 0))
  out = apply(net, params, stats, images, "torch", report.architecture)
  assert len(expected) == 10
  for key, ref in expected.items():
    assert rel_err(out[key], ref) < RTOL, key


def test_torchvision_resnet50_pth_and_safetensors_match_torchvision(tmp_path):
  torch = pytest.importorskip("torch")
  torchvision = import_torchvision()
  torch.manual_seed(0)
  resnet = randomize_batchnorm(torchvision.models.resnet50(weights=None), torch.Generator().manual_seed(1))
  # DataParallel's `module.` prefix is stripped; torch.save of a state dict is what torchvision downloads.
  pth = save_state({f"module.{k}": v for k, v in resnet.state_dict().items()}, tmp_path / "resnet50.pth")
  st = save_state(resnet.state_dict(), tmp_path / "resnet50.safetensors")
  images = np.random.default_rng(5).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
  with torch.no_grad():
    x = torchvision_input(images)
    x = resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(x))))
    expected = []
    for layer in (resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4):
      x = layer(x)
      expected.append(nhwc(x))

  net = ResNet(depth=50)
  shapes = abstract_variables(net, 64)
  params, stats, report = weights.load_into(shapes["params"], shapes["batch_stats"], init_from(pth), net)
  assert (report.num_loaded, report.num_left_at_init) == (23_508_032, 0)  # torchvision's 25.56 M less fc
  assert set(report.ignored) == {"fc.weight", "fc.bias"}
  from_st = weights.load_into(shapes["params"], shapes["batch_stats"], init_from(st), net)
  jax.tree.map(np.testing.assert_array_equal, (params, stats), from_st[:2])
  out = apply(net, params, stats, images, "torch", "resnet50")
  for i, ref in enumerate(expected, start=1):
    assert out[f"layer{i}"].shape == ref.shape
    assert rel_err(out[f"layer{i}"], ref) < RTOL, f"layer{i}"


# ------------------------------------------------------------------------------------------------ fc6 / fc7


def fcn_fc_layers(path, stages, fc_features=16):
  """fc6/fc7 of an FCN-32s (narrow) loaded from `path`; also returns the load report."""
  net = models.build_model("fcn32s", 3, stages=stages, fc_features=fc_features)
  shapes = jax.eval_shape(lambda: net.init(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32), train=False))
  params, _, report = weights.load_into(shapes["params"], {}, init_from(path), net)
  return params["fc6"], params["fc7"], report


def convolutional_fc(pool5_nhwc, fc6, fc7):
  # fc6 is a 7x7 'VALID' convolution over the 7x7 map (one output position), fc7 a 1x1 one.
  y = np.maximum(np.einsum("bhwc,hwcf->bf", pool5_nhwc, fc6["kernel"]) + fc6["bias"], 0)
  return np.maximum(y @ fc7["kernel"][0, 0] + fc7["bias"], 0)


def test_torchvision_classifier_becomes_fcn_fc6_fc7(tmp_path):
  """FCN's convolutionalised fc6/fc7 on pool5 compute torchvision's classifier[:5] on the flattened pool5."""
  torch = pytest.importorskip("torch")
  _, state = narrow_vgg_file(tmp_path / "unused.pth")  # pool5 has 8 channels: fc6 reads 7 x 7 x 8 inputs
  torch.manual_seed(1)
  classifier = torch.nn.Sequential(torch.nn.Linear(8 * 7 * 7, 16), torch.nn.ReLU(), torch.nn.Dropout(),
                                   torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Dropout(),
                                   torch.nn.Linear(16, 1000)).eval()
  state.update({f"classifier.{k}": v for k, v in classifier.state_dict().items()})
  path = save_state(state, tmp_path / "vgg16_with_classifier.pth")
  fc6, fc7, report = fcn_fc_layers(path, NARROW)
  assert {"params:fc6/kernel", "params:fc7/bias"} <= set(report.loaded)
  assert set(report.ignored) == {"classifier.6.weight", "classifier.6.bias"}
  pool5 = torch.randn(2, 8, 7, 7)
  with torch.no_grad():
    expected = classifier[:5](pool5.flatten(1)).numpy()
  assert rel_err(convolutional_fc(nhwc(pool5), fc6, fc7), expected) < RTOL

  # DeepLab's fc6 is a 3x3 of other widths: left at initialisation, and said so.
  exp = experiment.build(deeplab_config(path))
  shapes = exp.abstract_state()
  _, _, report = weights.load_into(shapes.params, shapes.batch_stats, exp.config.init_from, exp.model)
  assert any(k.startswith("fc6/kernel (7, 7, 8, 16) (the model's fc6/kernel is of shape (3, 3, 8, 8))")
             for k in report.ignored)
  assert not any("fc6" in k for k in report.loaded)


def test_keras_include_top_fc1_fc2_become_fcn_fc6_fc7(tmp_path):
  keras = pytest.importorskip("keras")
  # The layers of a keras-applications VGG16 with include_top that matter here: a block conv, then Flatten
  # (channels-last) of a 7x7 map, fc1, fc2 and the ignored predictions.
  model = keras.Sequential([
      keras.Input((7, 7, 3)),
      keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="block1_conv1"),
      keras.layers.Flatten(name="flatten"),
      keras.layers.Dense(16, activation="relu", name="fc1"),
      keras.layers.Dense(16, activation="relu", name="fc2"),
      keras.layers.Dense(10, activation="softmax", name="predictions"),
  ])
  randomize_keras(model, np.random.default_rng(6))
  path = save_keras(model, tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels.h5")
  fc6, fc7, report = fcn_fc_layers(path, ((8, 2),) + NARROW[1:])
  assert set(report.ignored) == {"predictions/kernel", "predictions/bias"}
  probe = keras.Model(model.inputs, [model.get_layer("block1_conv1").output, model.get_layer("fc2").output])
  pool5, expected = probe.predict(np.random.default_rng(7).normal(size=(2, 7, 7, 3)).astype(np.float32), verbose=0)
  assert rel_err(convolutional_fc(pool5, fc6, fc7), expected) < RTOL
