"""The independent references of the weight-import tests and their helpers: randomly initialised Keras applications
and torchvision networks (random BatchNorm statistics and biases too, so that every array's mapping matters) saved
in the layouts users download, and narrow torchvision-layout VGG16 files for the recipe path.

Keras runs on its numpy backend, which needs neither TensorFlow nor JAX's per-shape compilation of random
initialisers (~25 s for VGG16 + ResNet50 on the jax backend on 2 cores, ~1 s here); its convolutions are still
XLA's, but the layer graph (padding, strides, epsilon, BGR preprocessing) is Keras'. A KERAS_BACKEND set by the
environment, or a keras imported earlier, is used as is; tests/weights/conftest.py imports this module, so the
backend is chosen before any test module imports keras.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "numpy")

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from segjax import config as config_lib  # noqa: E402
from segjax import models, weights  # noqa: E402

# Measured on this machine: 3e-7..1e-6 for every comparison below (float32, one XLA convolution per layer on
# either side); the bound leaves room for other BLAS/XLA builds. Without the BGR flip the error is of order 1;
# without the BN epsilon fold, 5e-4 (near-dead channels of randomize_keras).
RTOL = 1e-4

# Keras' numpy backend converts its variables with np.array(x, copy=False) semantics that numpy 2 warns about.
KERAS_NUMPY_WARNING = "ignore:__array__ implementation doesn't accept a copy keyword"


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
