"""MMSegmentation-style saturation and hue jitter (segjax.data.augment): against a colorsys reference of the same
formulas with the parameters the op drew, labels untouched, per-example determinism, probabilities, and the
guarantee that recipes which leave them off get bitwise the same batches as before."""

import colorsys
import functools

import jax
import numpy as np
import pytest

from segjax.data import augment as A
from tests.data.test_augment import colour_coded, run

MMSEG = dict(saturation=(0.5, 1.5), hue_delta=18.0)  # MMSeg's PhotoMetricDistortion defaults
# A cheap-to-compile chain around them (test_augment covers elastic and blur, slow to compile on CPU).
GEOMETRIC = dict(zoom=(0.6, 1.8), hflip_prob=0.5, rotate_degrees=40.0)
PHOTOMETRIC = dict(brightness=0.1, contrast=0.3, gamma=(0.7, 1.4), noise_std=(1.0, 8.0), noise_prob=0.5)


def drawn(key, example, op_id, lo, hi, prob):
  """(applied, value) the op `op_id` of example `example` drew: the same jax.random calls as augment.py."""
  k_on, k_v = jax.random.split(jax.random.fold_in(jax.random.fold_in(key, example), op_id))
  return bool(jax.random.uniform(k_on) < prob), float(jax.random.uniform(k_v, minval=lo, maxval=hi))


def reference(image, factor=1.0, hue_shift=0.0):
  """colorsys in float64: S *= factor clipped to [0, 1], then H += hue_shift / 180 of a turn, wrapped."""
  out = np.empty(image.shape, np.float64)
  for idx in np.ndindex(image.shape[:-1]):
    h, s, v = colorsys.rgb_to_hsv(*(image[idx] / 255.0))
    s = min(max(s * factor, 0.0), 1.0)
    h = (h + hue_shift / 180.0) % 1.0
    out[idx] = np.array(colorsys.hsv_to_rgb(h, s, v)) * 255.0
  return out


@pytest.mark.parametrize("op", ["saturation", "hue", "both"])
def test_matches_colorsys_with_the_drawn_parameters(op):
  image, label, weight = colour_coded(batch=6, h=9, w=11, seed=3)
  image[..., 0] = np.random.default_rng(4).integers(0, 256, image.shape[:-1])  # colourful red channel too
  on = dict(saturation=dict(saturation=(0.3, 1.7)), hue=dict(hue_delta=40.0), both=MMSEG)[op]
  cfg = A.AugmentConfig(**on)
  key = jax.random.key(21)
  out_image, out_label, out_weight = run(cfg, key, image, label, weight)
  np.testing.assert_array_equal(out_label, label)
  np.testing.assert_array_equal(out_weight, weight)
  applied = []
  for i in range(len(image)):
    factor, shift = 1.0, 0.0
    if cfg.saturation != (1.0, 1.0):
      sat_on, value = drawn(key, i, A._SATURATION, *cfg.saturation, cfg.saturation_prob)
      factor = value if sat_on else 1.0
      applied.append(sat_on)
    if cfg.hue_delta > 0:
      hue_on, value = drawn(key, i, A._HUE, -cfg.hue_delta, cfg.hue_delta, cfg.hue_prob)
      shift = value if hue_on else 0.0
      applied.append(hue_on)
    want = reference(image[i].astype(np.float64), factor, shift)
    # float32 HSV round trip against float64: a small fraction of a grey level.
    np.testing.assert_allclose(out_image[i], want, atol=0.05, err_msg=f"example {i}")
    if factor == 1.0 and shift == 0.0:
      np.testing.assert_array_equal(out_image[i], image[i])  # the coin said off: untouched, bit for bit
  assert any(applied) and not all(applied)  # both branches were exercised


def test_hue_units_are_opencv_half_degrees():
  # Pure red shifted by 18 OpenCV units (36 degrees) is (255, 153, 0): H = 36/360 = 0.1 of the turn.
  # Beside it black, white and grey: no hue to shift, and no NaN from the HSV conversion's divisions.
  red = np.array([[[[255, 0, 0], [0, 0, 0], [255, 255, 255], [128, 128, 128]]]], np.uint8)
  cfg = A.AugmentConfig(hue_delta=18.0, hue_prob=1.0)
  # Find a key whose draw is near +18 to check the scale end to end.
  for seed in range(200):
    key = jax.random.key(seed)
    _, shift = drawn(key, 0, A._HUE, -18.0, 18.0, 1.0)
    if shift > 17.5:
      break
  out = run(cfg, key, red, np.zeros((1, 1, 4), np.int32), np.ones((1, 1, 4), np.float32))[0][0, 0]
  expected = np.array(colorsys.hsv_to_rgb(shift / 180.0, 1.0, 1.0)) * 255.0
  np.testing.assert_allclose(out[0], expected, atol=0.05)
  assert 150 < out[0, 1] < 155 and out[0, 2] == 0
  np.testing.assert_allclose(out[1:], red[0, 0, 1:], atol=1e-3)


def test_probabilities_respected():
  n = 2000
  image = np.broadcast_to(np.array([200, 100, 50], np.uint8), (n, 2, 2, 3)).copy()
  label, weight = np.zeros((n, 2, 2), np.int32), np.ones((n, 2, 2), np.float32)
  for prob, on in ((0.5, dict(saturation=(0.5, 1.5))), (0.2, dict(hue_delta=18.0, hue_prob=0.2))):
    out = run(A.AugmentConfig(**on), jax.random.key(8), image, label, weight)[0]
    rate = np.mean(np.any(out != image, axis=(1, 2, 3)))
    assert abs(rate - prob) < 4 * np.sqrt(prob * (1 - prob) / n), (on, rate)


def test_deterministic_per_example_and_other_ops_unchanged():
  image, label, weight = colour_coded(batch=4)  # the shapes of the next test: its compiled chains are reused
  cfg = A.AugmentConfig(**GEOMETRIC, **PHOTOMETRIC, **MMSEG)
  key = jax.random.key(11)
  first = run(cfg, key, image, label, weight)
  again = run(cfg, key, image, label, weight)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a, b)
  single = jax.device_get(jax.jit(functools.partial(A.augment_example, cfg))(jax.random.fold_in(key, 3), image[3],
                                                                             label[3], weight[3]))
  np.testing.assert_allclose(single[0], first[0][3], rtol=1e-5, atol=1e-2)
  np.testing.assert_array_equal(single[1], first[1][3])
  # The new ops draw from their own keys: geometry (labels, weights) is that of the chain without them.
  without = run(A.AugmentConfig(**GEOMETRIC, **PHOTOMETRIC), key, image, label, weight)
  np.testing.assert_array_equal(without[1], first[1])
  np.testing.assert_array_equal(without[2], first[2])
  assert not np.allclose(without[0], first[0])


def test_off_is_bitwise_the_previous_chain():
  """Off by default, and any off setting (identity range, zero delta, whatever the probabilities) traces no new
  op: every existing recipe's batches are bitwise those of the chain before saturation and hue existed."""
  defaults = A.AugmentConfig()
  assert (defaults.saturation, defaults.hue_delta) == ((1.0, 1.0), 0.0) and not defaults.colour
  image, label, weight = colour_coded(batch=4)
  key = jax.random.key(2)
  base = A.AugmentConfig(**GEOMETRIC, **PHOTOMETRIC)
  want = run(base, key, image, label, weight)
  got = run(A.AugmentConfig(**GEOMETRIC, **PHOTOMETRIC, saturation_prob=1.0, hue_prob=1.0), key, image, label,
            weight)
  for a, b in zip(want, got):
    np.testing.assert_array_equal(a, b)
  # Probability 0 with the ops configured: the image is where()'d back to the untouched one.
  got = run(A.AugmentConfig(**GEOMETRIC, **PHOTOMETRIC, **MMSEG, saturation_prob=0.0, hue_prob=0.0), key, image,
            label, weight)
  for a, b in zip(want, got):
    np.testing.assert_array_equal(a, b)
  # The identity config still short-circuits.
  assert A.AugmentConfig(saturation_prob=1.0, hue_prob=0.1).is_identity is False
  out = run(A.AugmentConfig(), key, image, label, weight)
  np.testing.assert_array_equal(out[0], image)


def test_config_keys_and_errors():
  from segjax import config as config_lib  # pylint: disable=import-outside-toplevel
  c = config_lib.default_config()
  assert (c.augment.saturation, c.augment.saturation_prob, c.augment.hue_delta, c.augment.hue_prob) == (
      (1.0, 1.0), 0.5, 0.0, 0.5)
  cfg = A.from_config(A.config_block(saturation=[0.5, 1.5], hue_delta=18))
  assert cfg.saturation == (0.5, 1.5) and cfg.colour
  hash(cfg)
  with pytest.raises(ValueError, match=r"augment\.saturation=\(1\.5, 0\.5\)"):
    A.AugmentConfig(saturation=(1.5, 0.5))
  with pytest.raises(ValueError, match=r"augment\.hue_delta=100"):
    A.AugmentConfig(hue_delta=100)
  with pytest.raises(ValueError, match=r"augment\.hue_prob"):
    A.AugmentConfig(hue_prob=2.0)
  # Grey-level images: refused at validation (ISBI 2012 is single-channel), and at trace time.
  config_lib.use_dataset(c, "isbi2012")
  c.augment.hue_delta = 18.0
  with pytest.raises(ValueError, match=r"config\.augment=.*need RGB"):
    config_lib.validate(c)
  with pytest.raises(ValueError, match="need RGB"):
    A.augment_example(A.AugmentConfig(hue_delta=18.0), jax.random.key(0), np.zeros((4, 4, 1)),
                      np.zeros((4, 4), np.int32), np.ones((4, 4)))

