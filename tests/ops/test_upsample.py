"""segjax.ops.upsample: every upsampling method against numpy references (nearest, bed of nails, bilinear resize,
transposed convolution, index unpooling), their initialisations, gradients and errors."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from jax.test_util import check_grads

from segjax.ops import UPSAMPLE_METHODS, Upsample, bed_of_nails, bilinear_kernel, resize_bilinear, transposed_conv
from segjax.ops import upsample_nearest
from tests.ops.common import distinct, np_max_unpool, pool_jit


def np_resize_bilinear(x, oh, ow, align_corners):
  x = np.asarray(x, np.float64)

  def coords(n_in, n_out):
    if align_corners:
      src = np.arange(n_out) * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
    else:  # half-pixel centres, clamped at the border (PyTorch align_corners=False)
      src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, src - lo

  b, h, w, c = x.shape
  out = np.zeros((b, oh, ow, c))
  rl, rh, rf = coords(h, oh)
  cl, chi, cf = coords(w, ow)
  for i in range(oh):
    for j in range(ow):
      top = x[:, rl[i], cl[j]] * (1 - cf[j]) + x[:, rl[i], chi[j]] * cf[j]
      bottom = x[:, rh[i], cl[j]] * (1 - cf[j]) + x[:, rh[i], chi[j]] * cf[j]
      out[:, i, j] = top * (1 - rf[i]) + bottom * rf[i]
  return out


def np_transposed_conv(x, kernel, f):
  """Caffe Deconvolution / PyTorch ConvTranspose2d scatter, then the crop to f*H x f*W (pad f // 2)."""
  x, kernel = np.asarray(x, np.float64), np.asarray(kernel, np.float64)
  b, h, w, _ = x.shape
  k = kernel.shape[0]
  full = np.zeros((b, (h - 1) * f + k, (w - 1) * f + k, kernel.shape[-1]))
  for i in range(h):
    for j in range(w):
      full[:, i * f:i * f + k, j * f:j * f + k] += np.einsum("bc,klco->bklo", x[:, i, j], kernel)
  p = f // 2
  return full[:, p:p + h * f, p:p + w * f]


def np_nearest(x, f):
  return np.asarray(x).repeat(f, axis=1).repeat(f, axis=2)


def np_bed_of_nails(x, f):
  x = np.asarray(x)
  b, h, w, c = x.shape
  out = np.zeros((b, f * h, f * w, c), x.dtype)
  out[:, ::f, ::f] = x
  return out


def _apply(method, factor, x, **kw):
  """init + apply of Upsample on x (pooled with window=stride=factor first for 'unpool')."""
  mod = Upsample(method, factor, **kw)
  extra = {}
  if method == "unpool":
    pre = x
    x, extra["indices"] = pool_jit(x, factor, factor)
    extra["output_shape"] = pre.shape
  # The default partitionable threefry compiles for seconds per shape on XLA:CPU; the classic one does not.
  with jax.threefry_partitionable(False):
    variables = jax.jit(lambda x: mod.init(jax.random.key(0), x, **extra))(x)
  return mod, variables, x, extra, jax.jit(lambda v, x: mod.apply(v, x, **extra))(variables, x)


@pytest.mark.parametrize("factor", [2, 3])
@pytest.mark.parametrize("method", UPSAMPLE_METHODS)
def test_upsample_output_shapes(method, factor):
  x = jnp.asarray(distinct((2, 6, 12, 3)))
  _, _, xin, _, y = _apply(method, factor, x)
  chex.assert_shape(y, (2, factor * xin.shape[1], factor * xin.shape[2], 3))
  chex.assert_type(y, jnp.float32)


class UpsampleOpsVariantsTest(chex.TestCase):
  """The functional ops traced under jit and run eagerly (chex variants) against the numpy references."""

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(2, 3)
  def test_fixed_upsamplings_match_numpy(self, factor):
    x = jnp.asarray(distinct((2, 4, 5, 3)))
    np.testing.assert_array_equal(np.asarray(self.variant(lambda x: upsample_nearest(x, factor))(x)),
                                  np_nearest(x, factor))
    np.testing.assert_array_equal(np.asarray(self.variant(lambda x: bed_of_nails(x, factor))(x)),
                                  np_bed_of_nails(x, factor))

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.product(size=((8, 10), (7, 3), (3, 12), (1, 1)), align_corners=(False, True))
  def test_resize_bilinear_matches_numpy(self, size, align_corners):
    x = jnp.asarray(distinct((2, 4, 6, 3)))
    y = self.variant(lambda x: resize_bilinear(x, size, align_corners=align_corners))(x)
    np.testing.assert_allclose(np.asarray(y), np_resize_bilinear(x, *size, align_corners), atol=1e-6)
    if align_corners and size[0] > 1:
      np.testing.assert_array_equal(np.asarray(y)[:, [0, -1]][:, :, [0, -1]],
                                    np.asarray(x)[:, [0, -1]][:, :, [0, -1]])

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(2, 3)
  def test_transposed_conv_matches_numpy_and_flax(self, factor):
    rng = np.random.default_rng(5)
    k = 2 * factor - factor % 2
    x = rng.standard_normal((2, 4, 5, 3)).astype(np.float32)
    kernel = rng.standard_normal((k, k, 3, 4)).astype(np.float32)
    y = np.asarray(self.variant(lambda x, kernel: transposed_conv(x, kernel, factor))(x, kernel))
    np.testing.assert_allclose(y, np_transposed_conv(x, kernel, factor), atol=1e-5)
    # Flax's ConvTranspose ('VALID', transpose_kernel=False) correlates with the kernel, i.e. applies it flipped.
    ct = nn.ConvTranspose(4, (k, k), strides=(factor, factor), padding="VALID", use_bias=False)
    full = np.asarray(ct.apply({"params": {"kernel": kernel[::-1, ::-1]}}, x))
    p = factor // 2
    np.testing.assert_allclose(y, full[:, p:p + 4 * factor, p:p + 5 * factor], atol=1e-5)


@pytest.mark.parametrize("factor", [2, 3])
def test_upsample_module_fixed_methods_match_numpy(factor):
  x = jnp.asarray(distinct((2, 4, 5, 3)))
  for method, ref in (("nearest", np_nearest), ("bed_of_nails", np_bed_of_nails)):
    np.testing.assert_array_equal(np.asarray(_apply(method, factor, x)[-1]), ref(x, factor))
  big = jnp.asarray(distinct((2, 3 * factor, 4 * factor, 3)))
  _, _, pooled, extra, y = _apply("unpool", factor, big)
  np.testing.assert_array_equal(np.asarray(y), np_max_unpool(pooled, extra["indices"], big.shape[1:3]))
  np.testing.assert_allclose(np.asarray(_apply("bilinear", factor, x)[-1]),
                             np_resize_bilinear(x, 4 * factor, 5 * factor, False), atol=1e-6)


def test_bilinear_kernel_is_fcn_upsample_filt():
  # FCN surgery.upsample_filt: factor = (k+1)//2, centre factor-1 (odd k) or factor-0.5 (even k),
  # filter (1 - |i - centre| / factor) along each axis.
  k4 = bilinear_kernel(4, 3)
  np.testing.assert_allclose(k4[:, :, 1, 1], np.outer([0.25, 0.75, 0.75, 0.25], [0.25, 0.75, 0.75, 0.25]))
  k5 = bilinear_kernel(5, 2)
  third = [1 / 3, 2 / 3, 1.0, 2 / 3, 1 / 3]
  np.testing.assert_allclose(k5[:, :, 0, 0], np.outer(third, third), rtol=1e-6)
  off_diagonal = ~np.eye(3, dtype=bool)
  assert k4.shape == (4, 4, 3, 3) and not k4[:, :, off_diagonal].any()


@pytest.mark.parametrize("factor", [2, 3])
def test_transpose_bilinear_starts_as_bilinear(factor):
  x = jnp.asarray(np.random.default_rng(6).standard_normal((2, 6, 7, 3)), jnp.float32)
  _, variables, _, _, y = _apply("transpose_bilinear", factor, x)
  assert set(variables["params"]) == {"kernel"}  # FCN's upsampling layers have no bias (bias_term: false)
  ref = np_resize_bilinear(x, 6 * factor, 7 * factor, False)
  # The transposed convolution sees zeros beyond the border where bilinear replicates the edge: compare away
  # from a factor-wide border.
  np.testing.assert_allclose(np.asarray(y)[:, factor:-factor, factor:-factor], ref[:, factor:-factor, factor:-factor],
                             atol=1e-5)
  assert np.abs(np.asarray(y) - ref).max() > 0.1  # and the border does differ, so the crop above matters


def test_transpose_changes_channels_and_matches_numpy():
  x = jnp.asarray(np.random.default_rng(7).standard_normal((2, 3, 4, 3)), jnp.float32)
  _, variables, _, _, y = _apply("transpose", 2, x, features=5)
  kernel, bias = variables["params"]["kernel"], variables["params"]["bias"]
  chex.assert_shape([kernel, bias], [(4, 4, 3, 5), (5,)])
  np.testing.assert_allclose(np.asarray(y), np_transposed_conv(x, kernel, 2) + np.asarray(bias), atol=1e-5)


@pytest.mark.parametrize("factor", [2, 3])
def test_learned_starts_as_bed_of_nails(factor):
  x = jnp.asarray(distinct((2, 4, 5, 3)))
  _, variables, _, _, y = _apply("learned", factor, x)
  assert variables["params"]["kernel"].shape == (factor, factor, 3)
  np.testing.assert_array_equal(np.asarray(y), np_bed_of_nails(x, factor))


@pytest.mark.parametrize("method", ["transpose", "transpose_bilinear", "learned"])
def test_gradients_flow_to_learned_upsamplings(method):
  x = jnp.asarray(np.random.default_rng(8).standard_normal((2, 3, 4, 2)), jnp.float32)
  mod, variables, _, _, y = _apply(method, 2, x)
  ct = jnp.asarray(np.random.default_rng(9).standard_normal(y.shape), jnp.float32)
  grads = jax.jit(jax.grad(lambda p: (mod.apply({"params": p}, x) * ct).sum()))(variables["params"])
  kernel_grad = np.asarray(grads["kernel"])
  if method == "learned":
    # y[b, 2i+r, 2j+s, c] = x[b, i, j, c] * K[r, s, c]  =>  dL/dK[r, s, c] = sum_bij x * ct[.., 2i+r, 2j+s, ..].
    blocks = np.asarray(ct).reshape(2, 3, 2, 4, 2, 2)
    expected = np.einsum("bijc,birjsc->rsc", np.asarray(x), blocks)
  else:
    # y = sum_ij x[i, j] K[t - 2(i, j)]  =>  dL/dK[t] = sum over i, j of x[i, j] ct[2(i, j) + t - crop] (in range).
    expected = np.zeros(kernel_grad.shape)
    full = np.zeros((2, 2 * 3 + 2, 2 * 4 + 2, kernel_grad.shape[-1]))
    full[:, 1:1 + 6, 1:1 + 8] = np.asarray(ct)  # the crop of factor // 2 = 1
    for i in range(3):
      for j in range(4):
        expected += np.einsum("bc,bklo->klco", np.asarray(x[:, i, j]), full[:, 2 * i:2 * i + 4, 2 * j:2 * j + 4])
  np.testing.assert_allclose(kernel_grad, expected, rtol=1e-4, atol=1e-4)
  with jax.enable_x64(True):
    x64 = jnp.asarray(x, jnp.float64)
    p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), variables["params"])
    mod64 = Upsample(method, 2, dtype=jnp.float64, param_dtype=jnp.float64)
    check_grads(jax.jit(lambda p, x: mod64.apply({"params": p}, x)), (p64, x64), order=1, modes=["fwd", "rev"])


def test_upsample_bfloat16_and_errors():
  x = jnp.asarray(distinct((1, 4, 4, 2)))
  for method in ("nearest", "bilinear", "transpose", "learned"):
    _, variables, _, _, y = _apply(method, 2, x, dtype=jnp.bfloat16)
    chex.assert_type(y, jnp.bfloat16)
    chex.assert_type(jax.tree.leaves(variables), jnp.float32)
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="indices"):
    jax.eval_shape(lambda: Upsample("unpool").init(key, x))
  with pytest.raises(ValueError, match="features"):
    jax.eval_shape(lambda: Upsample("nearest", features=5).init(key, x))
  with pytest.raises(ValueError, match="method"):
    jax.eval_shape(lambda: Upsample("cubic").init(key, x))
  # output_shape crops (e.g. back to an odd size after a ceil-mode pooling) and resizes for bilinear.
  assert jax.eval_shape(lambda: Upsample("nearest").apply({}, x, output_shape=(7, 8))).shape == (1, 7, 8, 2)
  y = Upsample("bilinear").apply({}, x, output_shape=(7, 5))
  np.testing.assert_allclose(np.asarray(y), np_resize_bilinear(x, 7, 5, False), atol=1e-6)
  with pytest.raises(ValueError, match="larger"):
    jax.eval_shape(lambda: Upsample("nearest").apply({}, x, output_shape=(9, 8)))
