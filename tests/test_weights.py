"""Pretrained backbone import (segjax.weights): Keras .h5 and torchvision .pth / .safetensors files give segjax
backbones that compute what Keras and torchvision compute with the same file, and Experiment.init_state loads them.

The references are the frameworks themselves, offline: randomly initialised Keras applications and torchvision
networks (random BatchNorm statistics and biases too, so that every array's mapping matters) saved in the
layouts users download. Keras runs on its numpy backend, which needs neither TensorFlow nor JAX's per-shape
compilation of random initialisers (~25 s for VGG16 + ResNet50 on the jax backend on 2 cores, ~1 s here); its
convolutions are still XLA's, but the layer graph (padding, strides, epsilon, BGR preprocessing) is Keras'. A
KERAS_BACKEND set by the environment, or a keras imported earlier, is used as is.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "numpy")

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from segjax import config as config_lib  # noqa: E402
from segjax import models, weights  # noqa: E402
from segjax.models.backbones.resnet import ResNet  # noqa: E402
from segjax.models.backbones.vgg import VGG16  # noqa: E402
from segjax.train import setup  # noqa: E402
from tests.conftest import import_torchvision  # noqa: E402

# Measured on this machine: 3e-7..1e-6 for every comparison below (float32, one XLA convolution per layer on
# either side); the bound leaves room for other BLAS/XLA builds. Without the BGR flip the error is of order 1;
# without the BN epsilon fold, 5e-4 (near-dead channels of randomize_keras).
RTOL = 1e-4

# Keras' numpy backend converts its variables with np.array(x, copy=False) semantics that numpy 2 warns about.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


def rel_err(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.abs(a - b).max() / np.abs(b).max())


def init_from(path, **overrides) -> ml_collections.ConfigDict:
  block = dict(path=str(path), format="auto", architecture="auto", target="auto")
  block.update(overrides)
  return ml_collections.ConfigDict(block)


def abstract_variables(net, size):
  # Shapes only: every backbone leaf is then loaded from the file, and no random initialisation is compiled.
  return jax.eval_shape(lambda: net.init(jax.random.key(0), np.zeros((1, size, size, 3), np.float32), train=False))


_FORWARD = {}


def apply(net, params, batch_stats, images, fmt, arch):
  mean, std = weights.input_normalization(fmt, arch)
  x = (images - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
  variables = {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}
  # One compiled forward per network (the Keras and torchvision VGG16 tests share theirs).
  forward = _FORWARD.setdefault(repr(net), jax.jit(lambda v, x: net.apply(v, x, train=False)))
  return forward(variables, x)


# ------------------------------------------------------------------------------------------------ Keras


def randomize_keras(model, rng):
  """Random kernels (He scale), biases, BN scales/offsets/statistics: Keras initialises biases and BN to 0/1."""
  values = []
  for w in model.weights:
    shape, name = tuple(w.shape), w.path
    if len(shape) == 4:
      values.append(rng.normal(0, np.sqrt(1.0 / np.prod(shape[:3])), shape))
    elif "moving_variance" in name:
      values.append(rng.uniform(0.5, 2.0, shape))
      if "conv5_block3_3_bn" in name:
        # Near-dead channels (real ImageNet statistics have them): there Keras' BN epsilon of 1.001e-5 instead
        # of 1e-5 changes the output by ~5e-4 relative, which the comparison must see.
        values[-1][:16] = 1e-7
    elif "gamma" in name:
      values.append(rng.uniform(0.3, 1.0, shape))
    else:  # bias, beta, moving_mean
      values.append(rng.normal(0, 0.1, shape))
  model.set_weights([v.astype(np.float32) for v in values])


def save_keras(model, path):
  import h5py  # pylint: disable=import-outside-toplevel
  from keras.src.legacy.saving import legacy_h5_format  # pylint: disable=import-outside-toplevel

  with h5py.File(path, "w") as f:
    legacy_h5_format.save_weights_to_hdf5_group(f, model)  # the keras-applications download layout
  return path


def keras_outputs(model, layer_names, images, preprocess):
  import keras  # pylint: disable=import-outside-toplevel

  probe = keras.Model(model.input, [model.get_layer(n).output for n in layer_names])
  return probe.predict(preprocess(images.copy()), verbose=0)  # caffe: RGB -> BGR, minus the BGR means


@pytest.fixture(scope="module")
def keras_resnet50(tmp_path_factory):
  keras = pytest.importorskip("keras")
  model = keras.applications.ResNet50(weights=None, include_top=False, input_shape=(64, 64, 3))
  randomize_keras(model, np.random.default_rng(1))
  return model, save_keras(model, tmp_path_factory.mktemp("keras") / "resnet50_notop.h5")


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


def test_keras_1_names_load_the_same(keras_resnet50, tmp_path):
  """The first keras-applications ResNet50 file names layers res2a_branch2a / bn2a_branch2a and weights
  `res2a_branch2a_W_1:0`: rewritten so, the file loads into the same arrays."""
  import h5py  # pylint: disable=import-outside-toplevel

  _, path = keras_resnet50
  old = tmp_path / "old_names.h5"

  def old_name(layer):
    if layer in ("conv1_conv", "conv1_bn"):
      return {"conv1_conv": "conv1", "conv1_bn": "bn_conv1"}[layer]
    stage, block, i, kind = layer[4], int(layer.split("_")[1][5:]), layer.split("_")[2], layer.split("_")[3]
    branch = {"0": "1", "1": "2a", "2": "2b", "3": "2c"}[i]
    return f"{'res' if kind == 'conv' else 'bn'}{stage}{'abcdef'[block - 1]}_branch{branch}"

  suffix = {"kernel": "W", "bias": "b", "gamma": "gamma", "beta": "beta", "moving_mean": "running_mean",
            "moving_variance": "running_std"}
  with h5py.File(path, "r") as src, h5py.File(old, "w") as dst:
    names = []
    for layer in (n.decode() if isinstance(n, bytes) else n for n in src.attrs["layer_names"]):
      group = src[layer]
      wnames = [n.decode() if isinstance(n, bytes) else n for n in group.attrs["weight_names"]]
      if not wnames:
        continue
      new = old_name(layer)
      out = dst.create_group(new)
      out_names = [f"{new}_{suffix[w.split('/')[-1]]}_1:0" for w in wnames]
      for w, o in zip(wnames, out_names):
        out[o] = group[w][()]
      out.attrs["weight_names"] = [n.encode() for n in out_names]
      names.append(new.encode())
    dst.attrs["layer_names"] = names

  net = ResNet(depth=50, stride_in_1x1=True)
  shapes = abstract_variables(net, 64)
  a = weights.load_into(shapes["params"], shapes["batch_stats"], init_from(path), net)
  b = weights.load_into(shapes["params"], shapes["batch_stats"], init_from(old), net)
  assert b[2].num_loaded == a[2].num_loaded
  jax.tree.map(np.testing.assert_array_equal, a[:2], b[:2])


# ------------------------------------------------------------------------------------------------ torchvision


def randomize_batchnorm(net, generator):
  import torch  # pylint: disable=import-outside-toplevel

  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.normal_(0, 0.1, generator=generator)
        m.running_var.uniform_(0.5, 2.0, generator=generator)
        m.weight.uniform_(0.3, 1.0, generator=generator)
        m.bias.normal_(0, 0.1, generator=generator)
  return net.eval()


def save_state(state, path):
  if str(path).endswith(".safetensors"):
    from safetensors.torch import save_file  # pylint: disable=import-outside-toplevel
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
  else:
    import torch  # pylint: disable=import-outside-toplevel
    torch.save(state, path)
  return path


def torchvision_input(images):
  import torch  # pylint: disable=import-outside-toplevel

  mean = np.asarray((0.485, 0.456, 0.406), np.float32)
  std = np.asarray((0.229, 0.224, 0.225), np.float32)
  return torch.from_numpy(((images / 255.0 - mean) / std).transpose(0, 3, 1, 2).copy())  # ToTensor + Normalize


def nhwc(t):
  return t.detach().numpy().transpose(0, 2, 3, 1)


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


# ------------------------------------------------------------------------------------------------ recipe path

NARROW = ((4, 2), (8, 2), (8, 3), (8, 3), (8, 3))  # VGG16's layer table at test widths


def narrow_vgg_file(path, widths=NARROW, seed=0):
  """A VGG16 state dict in torchvision's layout (`features.N.weight/bias`, N counting conv, ReLU and pool modules
  as vgg16().features does) of narrow widths, saved with torch.save."""
  torch = pytest.importorskip("torch")
  torch.manual_seed(seed)
  state, index, cin = {}, 0, 3
  for width, n in widths:
    for _ in range(n):
      conv = torch.nn.Conv2d(cin, width, 3, padding=1)
      state[f"features.{index}.weight"], state[f"features.{index}.bias"] = conv.weight.detach(), conv.bias.detach()
      index, cin = index + 2, width  # conv, ReLU
    index += 1  # MaxPool2d
  return save_state(state, path), state


def deeplab_config(path=None, dataset="shapes"):
  c = config_lib.use_dataset(config_lib.default_config(), dataset)
  c.model = models.model_config("deeplab_largefov", stages=NARROW, fc_features=8, fc6_dilation=2)
  c.init_from.path = None if path is None else str(path)
  return config_lib.finalize(c)


def test_recipe_initialises_the_backbone_from_the_file(tmp_path, caplog):
  path, state = narrow_vgg_file(tmp_path / "vgg16.pth")
  exp = setup.build(deeplab_config(path))
  # The normalisation follows the weights in training, eval and predict alike (no file read for it).
  np.testing.assert_allclose(exp.mean, (123.675, 116.28, 103.53))
  np.testing.assert_allclose(exp.std, (58.395, 57.12, 57.375))
  with caplog.at_level("INFO", logger="segjax.train.setup"):
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
  exp = setup.build(deeplab_config(wide))
  with pytest.raises(ValueError, match=r"wide\.pth: features\.0\.weight has shape \(6, 3, 3, 3\) .*\(3, 3, 3, 6\).*"
                                       r"'backbone/conv1_1/kernel' has shape \(3, 3, 3, 4\)\. Use weights"):
    exp.init_state()

  torch = pytest.importorskip("torch")
  resnet_like = save_state({"conv1.weight": torch.zeros(4, 3, 7, 7), "layer1.0.conv1.weight": torch.zeros(4, 4, 1, 1)},
                           tmp_path / "resnet.pth")
  with pytest.raises(ValueError, match=r"holds resnet\? ?.*weights, but .*vgg16 backbone"):
    setup.build(deeplab_config(resnet_like)).init_state()

  missing = tmp_path / "nowhere.h5"
  exp = setup.build(deeplab_config(missing))
  exp.abstract_state()  # restoring a checkpoint never reads the file
  assert exp.mean == weights.CAFFE_MEAN_RGB and exp.std == (1.0, 1.0, 1.0)
  with pytest.raises(FileNotFoundError, match=r"config\.init_from\.path=.*nowhere\.h5.*no such file"):
    exp.init_state()


def test_grayscale_dataset_sums_the_first_convolution(tmp_path):
  path, state = narrow_vgg_file(tmp_path / "vgg16.pth")
  exp = setup.build(deeplab_config(path, dataset="isbi2012"))
  assert exp.spec.num_channels == 1
  np.testing.assert_allclose(exp.mean, (np.mean((123.675, 116.28, 103.53)),))
  np.testing.assert_allclose(exp.std, (np.mean((58.395, 57.12, 57.375)),))
  shapes = exp.abstract_state()
  params, _, _ = weights.load_into(shapes.params, shapes.batch_stats, exp.config.init_from, exp.model)
  np.testing.assert_allclose(params["backbone"]["conv1_1"]["kernel"],
                             state["features.0.weight"].numpy().transpose(2, 3, 1, 0).sum(2, keepdims=True),
                             rtol=1e-6)


@pytest.mark.parametrize("key,value,match", [
    ("format", "onnx", r"config.init_from.format='onnx': choose one of"),
    ("architecture", "vgg19", r"config.init_from.architecture='vgg19': choose one of"),
    ("path", "weights.ckpt", r"cannot tell the format from the extension '.ckpt'.*set config.init_from.format"),
    ("architecture", "vgg16_bn", r"Keras has no VGG16-BN"),
])
def test_validate_checks_init_from(key, value, match):
  config = deeplab_config("vgg16_notop.h5")
  config.init_from[key] = value
  with pytest.raises(ValueError, match=match):
    config_lib.validate(config)


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
  exp = setup.build(deeplab_config(path))
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
