"""segjax.ops.pooling: max pooling with argmax and index unpooling against numpy loops, with and without jit,
under vmap and grad."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from jax.test_util import check_grads

from segjax.ops import max_pool_with_argmax, max_unpool
from tests.ops.common import distinct, np_max_pool_with_argmax, np_max_unpool, pool_jit, unpool_jit


POOL_CASES = [(2, 2, False), (2, 2, True), (3, 2, False), (3, 2, True)]  # (window, stride, ceil_mode)


SHAPES = [(2, 7, 9, 3), (3, 8, 6, 1)]


class PoolUnpoolVariantsTest(chex.TestCase):
  """The ops traced under jit and run eagerly op by op (chex variants): both must give the numpy loops' results."""

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.product(case=POOL_CASES, dtype=("float32", "bfloat16"))
  def test_pool_and_unpool_match_numpy(self, case, dtype):
    (k, s, ceil_mode), dtype = case, jnp.dtype(dtype)
    pool = self.variant(lambda x: max_pool_with_argmax(x, k, s, ceil_mode=ceil_mode))
    for seed, shape in enumerate(SHAPES):
      # Few distinct values: many ties, which must follow the first-in-row-major-window rule.
      x = jnp.asarray(np.random.default_rng(seed).integers(-3, 4, shape), dtype)
      values, indices = pool(x)
      ref_v, ref_i = np_max_pool_with_argmax(np.asarray(x, np.float32), k, s, ceil_mode)
      chex.assert_type([values, indices], [dtype, jnp.int32])
      np.testing.assert_array_equal(np.asarray(values, np.float64), ref_v)
      np.testing.assert_array_equal(np.asarray(indices), ref_i)
      # Unpool arbitrary values (not the pooled ones) so that, with overlapping windows, which duplicate wins
      # is visible.
      v = jnp.asarray(np.random.default_rng(seed + 10).standard_normal(values.shape), dtype)
      out = self.variant(lambda v, i, hw=shape[1:3]: max_unpool(v, i, hw))(v, indices)
      chex.assert_shape(out, shape)
      chex.assert_type(out, dtype)
      np.testing.assert_array_equal(np.asarray(out, np.float64), np_max_unpool(np.asarray(v, np.float32),
                                                                                  ref_i, shape[1:3]))

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters((2, 2), (3, 2))
  def test_pool_unpool_under_vmap(self, k, s):
    x = jnp.asarray(distinct((2, 2, 7, 9, 2)))  # an extra leading axis for vmap

    def round_trip(x):
      v, i = max_pool_with_argmax(x, k, s, ceil_mode=True)
      return v, i, max_unpool(v, i, x.shape[1:3])

    values, indices, unpooled = self.variant(jax.vmap(round_trip))(x)
    for n in range(x.shape[0]):
      ref_v, ref_i = np_max_pool_with_argmax(x[n], k, s, True)
      np.testing.assert_array_equal(np.asarray(values[n]), ref_v)
      np.testing.assert_array_equal(np.asarray(indices[n]), ref_i)
      np.testing.assert_array_equal(np.asarray(unpooled[n]), np_max_unpool(ref_v, ref_i, (7, 9)))


def test_segnet_odd_sizes_round_up_in_ceil_mode():
  # SegNet's Caffe pooling rounds up: CamVid's 360x480 goes 180x240, 90x120, 45x60, 23x30, 12x15.
  x = jax.ShapeDtypeStruct((1, 45, 60, 1), jnp.float32)
  assert jax.eval_shape(lambda x: max_pool_with_argmax(x, ceil_mode=True), x)[0].shape == (1, 23, 30, 1)
  assert jax.eval_shape(max_pool_with_argmax, x)[0].shape == (1, 22, 30, 1)


def test_tie_rule_first_in_row_major_window_order():
  x = np.array([[5, 5, 1, 2, 0, 0],
                [5, 5, 2, 1, 0, 7],
                [0, 3, 3, 0, 4, 4],
                [3, 0, 0, 3, 4, 4]], np.float32)[None, :, :, None]
  _, indices = pool_jit(jnp.asarray(x), 2, 2)
  rows, cols = np.divmod(np.asarray(indices)[0, :, :, 0], 6)
  # all four tied -> top-left; 2 at (0,3) and (1,2) -> (0,3); 7 unique; 3 at (2,1),(3,0) -> (2,1);
  # 3 at (2,2),(3,3) -> (2,2); four 4s -> top-left.
  np.testing.assert_array_equal(rows, [[0, 0, 1], [2, 2, 2]])
  np.testing.assert_array_equal(cols, [[0, 3, 5], [1, 2, 4]])


@pytest.mark.parametrize("k,s,ceil_mode", POOL_CASES)
def test_round_trip_keeps_exactly_the_maxima(k, s, ceil_mode):
  x = jnp.asarray(np.random.default_rng(3).integers(0, 3, (2, 7, 9, 3)), jnp.float32)  # ties everywhere
  out = np.asarray(unpool_jit(*pool_jit(x, k, s, ceil_mode=ceil_mode), x.shape))
  _, ref_i = np_max_pool_with_argmax(x, k, s, ceil_mode)
  kept = np.zeros(x.shape, bool)
  for n, i, j, ch in np.ndindex(ref_i.shape):
    kept[n, ref_i[n, i, j, ch] // 9, ref_i[n, i, j, ch] % 9, ch] = True
  np.testing.assert_array_equal(out[kept], np.asarray(x)[kept])
  np.testing.assert_array_equal(out[~kept], 0)


def test_overlapping_windows_picking_one_position():
  # 3x3/2 windows on 5x5: all four windows contain the centre (flat index 12), the unique maximum.
  x = -np.ones((1, 5, 5, 1), np.float32)
  x[0, 2, 2, 0] = 5.0
  values, indices = pool_jit(jnp.asarray(x), 3, 2)
  np.testing.assert_array_equal(np.asarray(indices)[0, :, :, 0], [[12, 12], [12, 12]])
  # Round trip: the maximum once (not summed over the four windows), gradient 1 there, not 4.
  round_trip = lambda x: max_unpool(*max_pool_with_argmax(x, 3, 2), (5, 5))
  expected = np.zeros_like(x)
  expected[0, 2, 2, 0] = 5.0
  out, vjp = jax.vjp(jax.jit(round_trip), jnp.asarray(x))
  np.testing.assert_array_equal(np.asarray(out), expected)
  np.testing.assert_array_equal(np.asarray(vjp(jnp.ones_like(out))[0]), expected / 5.0)
  # Different values aimed at one position: the last window in row-major order wins and alone gets gradient.
  v = jnp.asarray([[1.0, 2.0], [3.0, 4.0]])[None, :, :, None]
  out, vjp = jax.vjp(lambda v: unpool_jit(v, indices, (5, 5)), v)
  assert float(out[0, 2, 2, 0]) == 4.0
  g = vjp(jnp.ones_like(out))[0]
  np.testing.assert_array_equal(np.asarray(g)[0, :, :, 0], [[0, 0], [0, 1]])


def test_unpool_arbitrary_indices_match_numpy():
  # Indices that do not sit in their own 2x2 block (and repeat): the general path must still be exact.
  rng = np.random.default_rng(4)
  v = jnp.asarray(rng.standard_normal((2, 3, 4, 2)), jnp.float32)
  idx = rng.integers(0, 6 * 8, v.shape).astype(np.int32)
  np.testing.assert_array_equal(np.asarray(unpool_jit(v, jnp.asarray(idx), (6, 8))),
                                np_max_unpool(v, idx, (6, 8)).astype(np.float32))
  # Indices outside the map are dropped, never wrapped or clamped onto a pixel.
  bad = idx.copy()
  bad[0, 0, 0, 0], bad[1, 2, 3, 1] = -1, 6 * 8
  out = np.asarray(unpool_jit(v, jnp.asarray(bad), (6, 8)))
  np.testing.assert_array_equal(out, np_max_unpool(v, bad, (6, 8)).astype(np.float32))


@pytest.mark.parametrize("k,s,ceil_mode", [(2, 2, True), (3, 2, False)])  # block path, scatter path
def test_gradients_float64(k, s, ceil_mode):
  with jax.enable_x64(True):
    x = jnp.asarray(distinct((1, 7, 9, 2), dtype=np.float64))
    pool = jax.jit(lambda x: max_pool_with_argmax(x, k, s, ceil_mode=ceil_mode)[0])
    round_trip = jax.jit(lambda x: max_unpool(*max_pool_with_argmax(x, k, s, ceil_mode=ceil_mode), (7, 9)))
    values, indices = pool_jit(x, k, s, ceil_mode=ceil_mode)
    # First order: these maps are piecewise linear (second derivatives vanish), and every extra order is
    # compiled anew, seconds each on this CPU. The round trip covers max_unpool's gradient w.r.t. its values.
    check_grads(pool, (x,), order=1, modes=["fwd", "rev"])
    check_grads(round_trip, (x,), order=1, modes=["fwd", "rev"])
    # The pooling gradient reaches exactly the argmax positions.
    g = np.asarray(jax.jit(jax.grad(lambda x: pool(x).sum()))(x))
    np.testing.assert_array_equal(g > 0, np.asarray(unpool_jit(jnp.ones_like(values), indices, (7, 9))) > 0)


def test_pool_matches_flax_max_pool():
  x = jnp.asarray(distinct((2, 8, 10, 3)))
  for k, s in ((2, 2), (3, 2)):
    np.testing.assert_array_equal(np.asarray(pool_jit(x, k, s)[0]),
                                  np.asarray(nn.max_pool(x, (k, k), (s, s))))
