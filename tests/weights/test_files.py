"""Reading weight files (segjax.weights.files): the Keras names of every keras-applications generation, torch
checkpoints' wrappers and key prefixes, and files that are not what a recipe names, refused with the reason."""

import jax
import numpy as np
import pytest

from segjax import weights
from segjax.models.backbones.resnet import ResNet
from tests.weights.references import KERAS_NUMPY_WARNING, abstract_variables, init_from, save_state

h5py = pytest.importorskip("h5py")
pytestmark = pytest.mark.filterwarnings(KERAS_NUMPY_WARNING)


def test_keras_1_names_load_the_same(keras_resnet50, tmp_path):
  """The first keras-applications ResNet50 file names layers res2a_branch2a / bn2a_branch2a and weights
  `res2a_branch2a_W_1:0`: rewritten so, the file loads into the same arrays."""
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


def test_keras_reader_takes_unnamed_weights_by_order_and_refuses_keras3_files(tmp_path):
  rng = np.random.default_rng(0)
  kernel, bias = rng.normal(size=(3, 3, 3, 4)).astype(np.float32), rng.normal(size=(4,)).astype(np.float32)
  path = tmp_path / "full_model.h5"
  with h5py.File(path, "w") as f:  # model.save("x.h5") keeps the weights under model_weights
    root = f.create_group("model_weights")
    root.attrs["layer_names"] = [b"block1_conv1", b"flatten"]
    group = root.create_group("block1_conv1")
    group["p0:0"], group["p1:0"] = kernel, bias  # names without a role: Keras' order, kernel then bias
    group.attrs["weight_names"] = [b"p0:0", b"p1:0"]
    root.create_group("flatten").attrs["weight_names"] = []
  layers = weights.read_keras_h5(str(path))
  assert list(layers) == ["block1_conv1"]
  np.testing.assert_array_equal(layers["block1_conv1"]["kernel"], kernel)
  np.testing.assert_array_equal(layers["block1_conv1"]["bias"], bias)

  keras3 = tmp_path / "model.weights.h5"
  with h5py.File(keras3, "w") as f:
    f.create_group("layers")
  with pytest.raises(ValueError, match=r"model\.weights\.h5: not a Keras weight file in the keras-applications "
                                       r"\(legacy h5\) layout.*Keras 3 `\.weights\.h5` files are not supported"):
    weights.read_keras_h5(str(keras3))


def test_torch_reader_unwraps_checkpoints_and_strips_prefixes(tmp_path):
  torch = pytest.importorskip("torch")
  torch.manual_seed(0)
  kernel, steps = torch.randn(4, 3, 3, 3, dtype=torch.float16), torch.tensor(7)
  # An MMSegmentation-style checkpoint: {"state_dict": {"backbone.<key>": ...}, "meta": ...}.
  path = save_state({"state_dict": {"backbone.features.0.weight": kernel, "backbone.features.1.num_batches_tracked":
                                    steps}, "meta": {"epoch": 3}}, tmp_path / "checkpoint.pth")
  state = weights.read_torch(str(path))
  assert sorted(state) == ["features.0.weight", "features.1.num_batches_tracked"]
  assert state["features.0.weight"].dtype == np.float32  # half-precision files are read as float32
  np.testing.assert_array_equal(state["features.0.weight"], kernel.float().numpy())
  assert state["features.1.num_batches_tracked"] == 7


def test_files_that_are_no_backbone_state_dict_are_refused(tmp_path):
  torch = pytest.importorskip("torch")
  model = save_state(torch.nn.Conv2d(3, 4, 3), tmp_path / "model_object.pth")  # torch.save(model), not its dict
  with pytest.raises(ValueError, match=r"(?s)model_object\.pth: torch\.load\(weights_only=True\) could not read it as "
                                       r"a state dict .*save `model\.state_dict\(\)`"):
    weights.read_torch(str(model))
  listed = save_state([torch.zeros(2)], tmp_path / "list.pth")
  with pytest.raises(ValueError, match=r"list\.pth: holds a list, not a state dict"):
    weights.read_torch(str(listed))
  classifier = save_state({"fc.weight": torch.zeros(10, 4)}, tmp_path / "classifier.pth")
  with pytest.raises(ValueError, match=r"classifier\.pth: neither a torchvision VGG16 \(features\.N\.weight\) nor a "
                                       r"ResNet .*its first keys: \['fc\.weight'\]"):
    weights.read_weights(str(classifier), "torch")
