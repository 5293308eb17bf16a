"""Helpers the model tests share: parameter counting, abstract and numpy-filled variables, numpy references.

Real forward passes use narrow networks and numpy-filled parameters (XLA:CPU compiles `model.init`'s random
number generation far more slowly than the forward pass itself); full-width networks only go through
`jax.eval_shape`.
"""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np

KEYS = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
TINY_STAGES = ((4, 2), (6, 2), (8, 3), (8, 3), (10, 3))  # VGG16's table with narrow channels
VGG16_CONV_PARAMS = 14_714_688  # torchvision vgg16().features

# (cin, cout) of VGG16's 13 3x3 convolutions (Simonyan & Zisserman 2015, Table 1, D).
VGG16_CONVS = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256), (256, 512),
               (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]


def count_params(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def conv_param_count(cin, cout, k=3):
  """A convolution with bias (Caffe's convolutions and deconvolutions all have one)."""
  return k * k * cin * cout + cout


def conv_block_param_count(cin, cout, bn):
  """Two 3x3 convolutions (U-Net's block); with BatchNorm the convolutions have no bias and BN adds scale and
  offset."""
  if bn:
    return 9 * cin * cout + 2 * cout + 9 * cout * cout + 2 * cout
  return conv_param_count(cin, cout) + conv_param_count(cout, cout)


def bn_param_count(c):
  """A BatchNorm's scale and shift (the Caffe "BN" layer of SegNet/DeconvNet)."""
  return 2 * c


def param_shapes(tree):
  return jax.tree.map(lambda leaf: leaf.shape, tree)


def abstract_variables(model, x, dtype=jnp.float32):
  """Variable shapes from `jax.eval_shape` (traces `init` without computing anything).

  Args:
    model: a segjax model.
    x: the input's shape, or a `jax.ShapeDtypeStruct`.
    dtype: the input dtype when `x` is a shape.
  """
  if not isinstance(x, jax.ShapeDtypeStruct):
    x = jax.ShapeDtypeStruct(tuple(x), dtype)
  return jax.eval_shape(lambda x: model.init(KEYS, x, train=False), x)


def abstract_init(model, shape, **kwargs):
  """(logits, variables) of `model.init_with_output` as shapes only: no real initialisation or forward pass."""
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  return jax.eval_shape(lambda x: model.init_with_output(KEYS, x, train=False, **kwargs), x)


def abstract_apply(model, shape, **kwargs):
  """(abstract variables, abstract output) of an eval-mode forward pass, without running anything."""
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(KEYS, x, train=False), x)
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False, **kwargs), variables, x)
  return variables, out


def abstract_intermediates(model, shape):
  """(abstract variables, abstract logits, abstract intermediates) without running anything."""
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(KEYS, x, train=False), x)
  out, state = jax.eval_shape(lambda v, x: model.apply(v, x, train=False, capture_intermediates=True,
                                                       mutable=["intermediates"]), variables, x)
  return variables, out, state["intermediates"]


def numpy_variables(model, x, seed=0, random_stats=False):
  """Variables with `model.init`'s structure, drawn with numpy: He-scaled normal kernels, small normal biases.

  Compiling `jax.random` (threefry) takes seconds per program on XLA:CPU, and any values serve these tests.

  Args:
    model: a segjax model.
    x: the input's shape, or an array or `jax.ShapeDtypeStruct` of it.
    seed: numpy seed.
    random_stats: BatchNorm scales and variances uniform in [0.5, 1.5], shifts and running means small normal
      (the references must then apply them); otherwise a fresh BatchNorm's (ones and zeros).
  """
  rng = np.random.default_rng(seed)
  abstract = abstract_variables(model, tuple(getattr(x, "shape", x)))

  def fill(path, leaf):
    name = path[-1].key
    if random_stats:
      if name == "kernel":
        return (rng.normal(size=leaf.shape) * np.sqrt(2 / np.prod(leaf.shape[:-1]))).astype(np.float32)
      if name in ("scale", "var"):
        return rng.uniform(0.5, 1.5, size=leaf.shape).astype(np.float32)
      return (0.1 * rng.normal(size=leaf.shape)).astype(np.float32)  # bias, mean
    if name == "kernel":
      value = rng.normal(0.0, np.sqrt(2.0 / np.prod(leaf.shape[:-1])), leaf.shape)
    elif name in ("scale", "var"):
      value = np.ones(leaf.shape)
    elif name == "bias":
      value = rng.normal(0.0, 0.1, leaf.shape)
    else:  # running means
      value = np.zeros(leaf.shape)
    return jnp.asarray(value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, abstract)


def assert_config_fields_and_float32(cls, shape=(1, 24, 16, 3)):
  """`cls` takes `num_classes` first and plain config values (or dtypes) for the rest, and with bfloat16 compute
  keeps float32 parameters and returns float32 logits."""
  fields = [f for f in dataclasses.fields(cls) if f.name not in ("parent", "name")]
  assert fields[0].name == "num_classes"
  for f in fields[1:]:
    if f.name not in ("dtype", "param_dtype"):
      assert isinstance(f.default, (int, float, bool, str, tuple)), f.name
  variables, out = abstract_apply(cls(4, dtype=jnp.bfloat16), shape)
  assert out.dtype == jnp.float32
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))


def numpy_params(model, shape, seed=0):
  """Parameters with `model.init`'s structure, filled from numpy (He-scaled normal kernels, small normal biases,
  `transpose_bias` included), for models without BatchNorm: XLA:CPU compiles threefry initialisers slowly on a
  loaded machine, and the tests only need well-scaled values."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    if path[-1].key.endswith("bias"):
      return (0.1 * rng.standard_normal(leaf.shape)).astype(np.float32)
    fan_in = int(np.prod(leaf.shape[:-1]))
    return (rng.standard_normal(leaf.shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, abstract_variables(model, shape)["params"])


def random_image(shape, seed=1):
  """A standard normal float32 array (numpy rng)."""
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def random_like(tree, seed=0, positive=False):
  """Concrete parameters of the given shapes (numpy rng): He-scaled normal kernels, small normal biases; with
  `positive`, uniform positive values scaled by the fan-in."""
  rng = np.random.default_rng(seed)

  def fill(s):
    if positive:
      return jnp.asarray(rng.uniform(0.5, 1.5, s.shape) / np.prod(s.shape[:-1]), s.dtype)
    scale = np.sqrt(2.0 / np.prod(s.shape[:-1])) if len(s.shape) == 4 else 0.1
    return jnp.asarray(rng.normal(0.0, scale, s.shape), s.dtype)
  return jax.tree.map(fill, tree)


def np_conv(x, kernel, bias, dilation, pad):
  """Direct dilated cross-correlation of [H, W, Ci] with [k, k, Ci, Co], zero padding `pad`."""
  k = kernel.shape[0]
  xp = np.pad(x, ((pad, pad), (pad, pad), (0, 0)))
  ho, wo = xp.shape[0] - dilation * (k - 1), xp.shape[1] - dilation * (k - 1)
  out = np.zeros((ho, wo, kernel.shape[-1])) + bias
  for u in range(k):
    for v in range(k):
      out += xp[u * dilation:u * dilation + ho, v * dilation:v * dilation + wo] @ kernel[u, v]
  return out


def np_interp(x, size, stride, centre):
  """Samples x [n, ...] along axis 0 at (y - centre) / stride for y < size, linearly, clamped at the ends."""
  pos = np.clip((np.arange(size) - centre) / stride, 0, x.shape[0] - 1)
  lo = np.minimum(np.floor(pos).astype(int), x.shape[0] - 2)
  frac = (pos - lo).reshape((size,) + (1,) * (x.ndim - 1))
  return x[lo] * (1 - frac) + x[lo + 1] * frac


def np_resize(x, size, stride, centre):
  """[h, w, C] scores -> [size[0], size[1], C] pixels, score (i, j) sitting over pixel (stride*i + centre, ...)."""
  rows = np_interp(x, size[0], stride, centre)
  return np.stack([np_interp(r, size[1], stride, centre) for r in rows])


def apply_shapes(model, shape, dtype=jnp.float32, **kwargs):
  """Shapes of (logits, variables) of a forward pass; the variables include the sown intermediates."""
  return jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x, train=False, mutable=True, **kwargs),
                        jax.ShapeDtypeStruct(shape, dtype))


def numpy_unpool_reference(pre_pool):
  """2x2/2 ceil-mode max pooling of [B, H, W, C] written back where each maximum was (first in row-major order
  on ties), zeros elsewhere; also the boolean map of those argmax positions."""
  b, h, w, c = pre_pool.shape
  out, mask = np.zeros_like(pre_pool), np.zeros(pre_pool.shape, bool)
  for i in range(0, h, 2):
    for j in range(0, w, 2):
      window = pre_pool[:, i:i + 2, j:j + 2, :]
      ww = window.shape[2]
      flat = window.reshape(b, -1, c)
      arg = flat.argmax(axis=1)
      for bi in range(b):
        for ci in range(c):
          di, dj = divmod(arg[bi, ci], ww)
          out[bi, i + di, j + dj, ci] = flat[bi, arg[bi, ci], ci]
          mask[bi, i + di, j + dj, ci] = True
  return out, mask


def assert_zero_off_argmax(unpooled, pre_pool):
  _, mask = numpy_unpool_reference(pre_pool)
  assert unpooled.shape == pre_pool.shape
  assert not np.any(unpooled[~mask]), "unpooled map has values away from the encoder's argmax positions"
  assert np.count_nonzero(unpooled) > 0.2 * mask.sum()


def forward_train(model, shape):
  """One jitted training-mode forward pass of an index-unpooling net (SegNet, DeconvNet) on numpy variables:
  (variables, (logits, state)) with the batch statistics, the sown intermediates and conv1_1's output."""
  x = jnp.asarray(np.random.default_rng(1).normal(size=shape), jnp.float32)
  variables = numpy_variables(model, shape)

  @jax.jit
  def apply(v, x):
    return model.apply(v, x, train=True, mutable=["batch_stats", "intermediates"],
                       capture_intermediates=lambda mdl, _: mdl.name == "conv1_1")

  logits, state = apply(variables, x)
  return variables, jax.tree.map(np.asarray, (logits, state))


def check_batch_stats_updated(run):
  """The training pass of `forward_train` gives finite float32 logits of the input size and updates every
  BatchNorm's running mean (Flax momentum 0.9 from 0)."""
  variables, (logits, state) = run
  chex.assert_type(logits, np.float32)
  chex.assert_tree_all_finite(logits)
  pre_pool1 = state["intermediates"].get("encoder", state["intermediates"])["pre_pool1"][0]
  assert logits.shape == pre_pool1.shape[:3] + (5,)
  old, new = variables["batch_stats"], state["batch_stats"]
  assert jax.tree.structure(old) == jax.tree.structure(new)
  for path, mean in jax.tree_util.tree_leaves_with_path(new):
    if path[-1].key == "mean":
      assert np.all(mean != 0), f"{jax.tree_util.keystr(path)} was not updated"
  if "encoder" in new:
    # Flax momentum 0.9: running mean <- 0.9 * 0 + 0.1 * batch mean of conv1_1's output.
    conv1_1 = state["intermediates"]["encoder"]["conv1_1"]["__call__"][0]
    np.testing.assert_allclose(new["encoder"]["bn1_1"]["mean"], 0.1 * conv1_1.mean(axis=(0, 1, 2)),
                               rtol=1e-4, atol=1e-6)
