"""Device-side joint augmentation: alignment of image and mask, identity, ignore handling, each op against numpy or
scipy, determinism and independence of the device layout."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from segjax.data import augment as A
from segjax.data import datasets, pipeline
from tests.data.fake_source import SPEC, make_source

NUM_CLASSES = 5
GEOMETRIC = dict(zoom=(0.6, 1.8), hflip_prob=0.5, vflip_prob=0.5, rotate_degrees=40.0, affine_scale=(0.8, 1.25),
                 affine_translate=0.15, affine_shear_degrees=15.0, elastic_sigma=3.0, elastic_grid=4)
PHOTOMETRIC = dict(brightness=0.1, contrast=0.3, gamma=(0.7, 1.4), blur_sigma=(0.5, 1.5), blur_prob=0.5,
                   noise_std=(1.0, 8.0), noise_prob=0.5, pixel_dropout=0.05, pixel_dropout_prob=0.5,
                   coarse_dropout_holes=3, coarse_dropout_prob=0.5)


def colour_coded(batch=6, h=29, w=34, seed=0, cell=4, ignore=0.1):
  """Blocky labels (cell x cell) with ignored pixels; the red channel encodes the label, the rest is noise."""
  rng = np.random.default_rng(seed)
  label = rng.integers(0, NUM_CLASSES, (batch, -(-h // cell), -(-w // cell))).repeat(cell, 1).repeat(cell, 2)
  label = label[:, :h, :w]
  weight = (rng.random((batch, h, w)) >= ignore).astype(np.float32)
  image = rng.integers(0, 256, (batch, h, w, 3)).astype(np.uint8)
  label = np.where(weight > 0, label, 0)  # the pipeline's convention: ignored pixels hold 0 with weight 0
  image[..., 0] = label * 50 + 5
  return image, label.astype(np.int32), weight


@functools.lru_cache(maxsize=None)
def _jitted(cfg):
  return jax.jit(functools.partial(A.augment_batch, cfg))


def run(cfg, key, image, label, weight):
  return jax.device_get(_jitted(cfg)(key, image, label, weight))


def test_identity_parameters_give_the_identity():
  image, label, weight = colour_coded()
  # Every geometric and photometric op configured, every probability 0: the warp path runs with identity
  # parameters and must reproduce the input exactly.
  probs = {k: 0.0 for k in ("zoom_prob", "hflip_prob", "vflip_prob", "rotate_prob", "affine_prob", "elastic_prob",
                            "brightness_prob", "contrast_prob", "gamma_prob", "blur_prob", "noise_prob",
                            "pixel_dropout_prob", "coarse_dropout_prob")}
  cfg = A.AugmentConfig(**{**GEOMETRIC, **PHOTOMETRIC, **probs})
  assert cfg.warps and not cfg.is_identity
  for interpolation in ("bilinear", "nearest"):
    out = run(A.AugmentConfig(**{**GEOMETRIC, **PHOTOMETRIC, **probs, "image_interpolation": interpolation}),
              jax.random.key(1), image, label, weight)
    np.testing.assert_array_equal(out[0], image.astype(np.float32))
    np.testing.assert_array_equal(out[1], label)
    np.testing.assert_array_equal(out[2], weight)
  # And the default config (all off) is the identity too.
  out = run(A.AugmentConfig(), jax.random.key(1), image, label, weight)
  np.testing.assert_array_equal(out[0], image)
  np.testing.assert_array_equal(out[1], label)


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
def test_geometric_chain_keeps_image_and_mask_aligned(interpolation):
  # Bilinear sampling is checked inside uniform regions, so it gets larger cells and no scattered ignore pixels.
  image, label, weight = (colour_coded(batch=8) if interpolation == "nearest"
                          else colour_coded(batch=8, h=40, w=48, cell=10, ignore=0.0))
  cfg = A.AugmentConfig(**GEOMETRIC, image_interpolation=interpolation)
  valid_fractions = []
  for seed in range(4):
    img, lab, wt = run(cfg, jax.random.key(seed), image, label, weight)
    chex.assert_trees_all_equal_shapes((img, lab, wt), (image, label, weight))
    chex.assert_type([lab, wt], [np.int32, np.float32])
    valid = wt > 0
    valid_fractions.append(valid.mean())
    # Masks hold only real ids where valid and 0 (with weight 0) elsewhere; weights stay binary.
    assert set(np.unique(lab[valid])) <= set(range(NUM_CLASSES)) and not lab[~valid].any()
    assert set(np.unique(wt)) <= {0.0, 1.0}
    red = img[..., 0]
    if interpolation == "nearest":
      # The colour that encodes the label agrees with the transformed mask at every valid pixel.
      np.testing.assert_array_equal(red[valid], lab[valid] * 50 + 5)
    else:
      # Bilinear blends neighbours across a label edge; inside uniform regions the colour is exact, and
      # everywhere it stays within one label step of the mask's colour.
      np.testing.assert_allclose(red[valid], lab[valid] * 50 + 5, atol=50 * (NUM_CLASSES - 1))
      uniform = ndimage.minimum_filter(lab, size=(1, 5, 5)) == ndimage.maximum_filter(lab, size=(1, 5, 5))
      interior = valid & uniform & (ndimage.minimum_filter(wt, size=(1, 5, 5)) > 0)
      close = np.abs(red - (lab * 50 + 5)) < 1e-3
      assert interior.sum() > 1000 and close[interior].mean() > 0.99
  # The ops really moved pixels in and out of view (ignore borders), but kept most pixels.
  assert 0.3 < np.mean(valid_fractions) < 0.95


def _reference_warp(image, label, weight, coords):
  """scipy's map_coordinates: order 1 with edge clamping for the image, order 0 for the masks."""
  grid = [coords[..., 0], coords[..., 1]]
  img = np.stack([ndimage.map_coordinates(image[..., c].astype(np.float64), grid, order=1, mode="nearest")
                  for c in range(image.shape[-1])], -1)
  h, w = label.shape
  inside = ((np.floor(grid[0] + 0.5) >= 0) & (np.floor(grid[0] + 0.5) <= h - 1)
            & (np.floor(grid[1] + 0.5) >= 0) & (np.floor(grid[1] + 0.5) <= w - 1))
  wt = np.where(inside, ndimage.map_coordinates(weight, grid, order=0, mode="nearest"), 0)
  lab = np.where(wt > 0, ndimage.map_coordinates(label, grid, order=0, mode="nearest"), 0)
  return img, lab, wt


def test_warp_equals_scipy_map_coordinates():
  image, label, weight = colour_coded(batch=1, h=23, w=31)
  cfg = A.AugmentConfig(**GEOMETRIC)
  for seed in range(3):
    key = jax.random.key(seed)
    a, t = A.sample_transform(cfg, key, 23, 31)
    coords = np.asarray(A.sampling_grid(a, t, 23, 31, A.sample_displacement(cfg, key, 23, 31)))
    got = jax.device_get(A.warp(image[0], label[0], weight[0], jnp.asarray(coords)))
    img, lab, wt = _reference_warp(image[0], label[0], weight[0], coords)
    np.testing.assert_allclose(got[0], img, atol=1e-3)
    # Rounding ties could differ in principle; with random real coordinates none occur.
    np.testing.assert_array_equal(got[2], wt)
    np.testing.assert_array_equal(got[1], lab)
    # And augment_example resamples at exactly these coordinates.
    out = jax.device_get(A.augment_example(cfg, key, image[0], label[0], weight[0]))
    np.testing.assert_allclose(out[0], img, atol=1e-3)
    np.testing.assert_array_equal(out[1], lab)


def test_flips_are_exact_with_and_without_resampling():
  image, label, weight = colour_coded(batch=2)
  flips = A.AugmentConfig(hflip_prob=1.0, vflip_prob=1.0)
  assert not flips.warps
  # Warp path: a rotation that never fires forces resampling, with flips at probability 1.
  warped = A.AugmentConfig(hflip_prob=1.0, vflip_prob=1.0, rotate_degrees=30.0, rotate_prob=0.0)
  for cfg in (flips, warped):
    img, lab, wt = run(cfg, jax.random.key(0), image, label, weight)
    np.testing.assert_array_equal(img, image[:, ::-1, ::-1].astype(np.float32))
    np.testing.assert_array_equal(lab, np.where(weight[:, ::-1, ::-1] > 0, label[:, ::-1, ::-1], 0))
    np.testing.assert_array_equal(wt, weight[:, ::-1, ::-1])
  only_h = run(A.AugmentConfig(hflip_prob=1.0), jax.random.key(0), image, label, weight)
  np.testing.assert_array_equal(only_h[1], label[:, :, ::-1])


def test_flip_probability():
  image, label, weight = colour_coded(batch=64, h=4, w=6)
  _, lab, _ = run(A.AugmentConfig(hflip_prob=0.5), jax.random.key(3), image, label, weight)
  flipped = np.array([np.array_equal(lab[i], label[i, :, ::-1]) and not np.array_equal(lab[i], label[i])
                      for i in range(64)])
  assert 20 <= flipped.sum() <= 44


def test_zoom_out_borders_become_ignore_never_a_class():
  image, label, weight = colour_coded(batch=4, h=32, w=40)
  weight = np.ones_like(weight)
  img, lab, wt = run(A.AugmentConfig(zoom=(0.5, 0.5)), jax.random.key(0), image, label, weight)
  for i in range(4):
    rows, cols = np.nonzero(wt[i])
    # The whole image shrinks to a 16x20 block somewhere inside the output; the rest is ignored.
    assert rows.max() - rows.min() + 1 == 16 and cols.max() - cols.min() + 1 == 20
    assert wt[i].sum() == 16 * 20 and not lab[i][wt[i] == 0].any()
  # Zooming in keeps every pixel valid: the window stays inside the image.
  _, _, wt = run(A.AugmentConfig(zoom=(1.5, 2.0)), jax.random.key(0), image, label, weight)
  assert wt.min() == 1.0


def test_transform_parameters_stay_in_their_ranges():
  cfg = A.AugmentConfig(zoom=(0.5, 2.0), rotate_degrees=30.0)
  for seed in range(20):
    a, t = (np.asarray(x) for x in A.sample_transform(cfg, jax.random.key(seed), 40, 60))
    s = 1 / np.sqrt(abs(np.linalg.det(a)))
    assert 0.5 - 1e-5 <= s <= 2.0 + 1e-5
    rot = a * s  # a pure rotation once the zoom is divided out
    np.testing.assert_allclose(rot @ rot.T, np.eye(2), atol=1e-5)
    assert abs(np.degrees(np.arctan2(rot[1, 0], rot[0, 0]))) <= 30 + 1e-4
    assert np.all(np.abs(t) <= 0.5 * np.array([40, 60]) * abs(1 - 1 / s) + 1e-4)


def test_elastic_displacement_interpolates_the_coarse_grid():
  cfg = A.AugmentConfig(elastic_sigma=10.0, elastic_grid=3)
  h, w = 33, 41  # odd, so the middle lattice point is a pixel centre
  samples = []
  for seed in range(200):
    key = jax.random.key(seed)
    d = np.asarray(A.sample_displacement(cfg, key, h, w))
    _, k_d = jax.random.split(jax.random.fold_in(key, 5))
    coarse = 10.0 * np.asarray(jax.random.normal(k_d, (3, 3, 2)))
    # Cubic convolution passes through its samples: the lattice pixels carry the drawn displacements.
    np.testing.assert_allclose(d[::16, ::20], coarse, atol=1e-3)
    samples.append(d[::16, ::20])
    # Smooth: neighbouring pixels move almost together.
    assert np.abs(np.diff(d, axis=0)).max() < 5.0
  assert 8.5 < np.std(samples) < 11.5  # the U-Net paper's 10 pixel standard deviation


def test_gaussian_blur_equals_scipy():
  rng = np.random.default_rng(0)
  x = rng.random((17, 23, 2)).astype(np.float32) * 255
  got = np.asarray(A.gaussian_blur(jnp.asarray(x), jnp.float32(1.3), radius=4))
  # numpy's "reflect" padding is scipy's "mirror"; truncate chosen so scipy's radius is also 4.
  ref = ndimage.gaussian_filter(x.astype(np.float64), sigma=(1.3, 1.3, 0), mode="mirror", truncate=4 / 1.3)
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-3)


def _photometric(cfg, image, seed=0):
  label = np.zeros(image.shape[:3], np.int32)
  weight = np.ones(image.shape[:3], np.float32)
  out = run(cfg, jax.random.key(seed), image, label, weight)
  np.testing.assert_array_equal(out[1], label)  # photometric ops never touch the mask
  np.testing.assert_array_equal(out[2], weight)
  return out[0]


def test_brightness_contrast_gamma():
  rng = np.random.default_rng(0)
  image = rng.integers(60, 190, (8, 12, 14, 3)).astype(np.uint8)
  x = image.astype(np.float64)
  out = _photometric(A.AugmentConfig(brightness=0.2), image)
  shift = (out - x).reshape(8, -1)
  np.testing.assert_allclose(shift, shift[:, :1].repeat(shift.shape[1], 1), atol=1e-3)  # one shift per image
  assert np.all(np.abs(shift) <= 0.2 * 255 + 1e-3) and len(np.unique(shift[:, 0].round(3))) == 8
  out = _photometric(A.AugmentConfig(contrast=0.3), image)
  mean = x.mean(axis=(1, 2, 3), keepdims=True)
  factor = ((out - mean) / (x - mean + 1e-12)).reshape(8, -1)
  ok = np.abs((x - mean).reshape(8, -1)) > 5
  for i in range(8):
    f = factor[i][ok[i]]
    np.testing.assert_allclose(f, np.median(f), atol=1e-3)
    assert 0.7 - 1e-4 <= np.median(f) <= 1.3 + 1e-4
  out = _photometric(A.AugmentConfig(gamma=(2.0, 2.0)), image)
  np.testing.assert_allclose(out, 255 * (x / 255) ** 2, rtol=1e-5)


def test_noise_and_dropouts():
  image = np.full((16, 32, 32, 3), 128, np.uint8)
  out = _photometric(A.AugmentConfig(noise_std=(4.0, 4.0), noise_prob=1.0), image)
  assert 3.8 < np.std(out - 128.0) < 4.2 and abs(np.mean(out - 128.0)) < 0.1
  out = _photometric(A.AugmentConfig(pixel_dropout=0.1, pixel_dropout_prob=1.0), image)
  dropped = out == 0
  assert np.array_equal(dropped.all(-1), dropped.any(-1))  # a dropped pixel loses all its channels
  assert 0.08 < dropped.all(-1).mean() < 0.12 and np.all(out[~dropped] == 128)
  cfg = A.AugmentConfig(coarse_dropout_holes=3, coarse_dropout_size=(0.1, 0.25), coarse_dropout_prob=1.0)
  out = _photometric(cfg, image)
  for i in range(16):
    hole = (out[i] == 0).all(-1)
    assert hole.any() and np.all(out[i][~hole] == 128)
    # A union of at most 3 rectangles of sides 3..8 pixels.
    labelled, count = ndimage.label(hole)
    assert 1 <= count <= 3 and hole.sum() <= 3 * 8 * 8
    for rows, cols in ndimage.find_objects(labelled):
      assert 3 <= rows.stop - rows.start <= 3 * 8 and 3 <= cols.stop - cols.start <= 3 * 8


def test_ops_draw_from_their_own_keys():
  image, label, weight = colour_coded()
  geo = run(A.AugmentConfig(**GEOMETRIC), jax.random.key(5), image, label, weight)
  both = run(A.AugmentConfig(**GEOMETRIC, **PHOTOMETRIC), jax.random.key(5), image, label, weight)
  # Turning photometric ops on changes pixels but not where they came from.
  np.testing.assert_array_equal(geo[1], both[1])
  np.testing.assert_array_equal(geo[2], both[2])
  assert not np.allclose(geo[0], both[0])


def test_deterministic_per_example_and_independent_of_device_layout():
  image, label, weight = colour_coded(batch=8)
  cfg = A.AugmentConfig(**GEOMETRIC, **PHOTOMETRIC)
  key = jax.random.key(11)
  first = run(cfg, key, image, label, weight)
  again = run(cfg, key, image, label, weight)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a, b)
  other = run(cfg, jax.random.key(12), image, label, weight)
  assert not np.array_equal(first[1], other[1])
  # Example i depends only on fold_in(key, i): the same as augmenting it alone.
  single = jax.device_get(A.augment_example(cfg, jax.random.fold_in(key, 3), image[3], label[3], weight[3]))
  # (Alone or vmapped, XLA may fuse the float arithmetic differently: agreement to float32 rounding.)
  np.testing.assert_allclose(single[0], first[0][3], rtol=1e-5, atol=1e-2)
  np.testing.assert_array_equal(single[1], first[1][3])
  # Sharded over 8 devices: identical results.
  assert jax.device_count() == 8
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  data = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  sharded = jax.jit(functools.partial(A.augment_batch, cfg), in_shardings=(None, data, data, data),
                    out_shardings=data)(key, *(jax.device_put(x, data) for x in (image, label, weight)))
  for a, b in zip(first, jax.device_get(sharded)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-2)


def test_pipeline_and_augmentation_resume_exactly():
  """Host crop + device augmentation, keyed by (seed, step): a restart at a step gives the same augmented
  batches as an uninterrupted run."""
  source = make_source([(14, 18)] * 9)
  cfg = A.AugmentConfig(**GEOMETRIC, **PHOTOMETRIC)

  def loader(start_step=0):
    crop = pipeline.RandomCrop((12, 16), SPEC.ignore_label, SPEC.num_classes)
    dataset = pipeline.train_dataset(source, crop, batch_size=4, seed=7, name=SPEC.name)
    return pipeline.train_iterator(dataset, start_step=start_step)

  def augmented(step, batch):
    key = jax.random.fold_in(jax.random.key(7), step)
    return run(cfg, key, batch["image"], batch["label"], batch["weight"])

  it = loader()
  straight = [augmented(s, next(it)) for s in range(5)]
  resumed = loader(start_step=2)
  for s in range(2, 5):
    for a, b in zip(straight[s], augmented(s, next(resumed))):
      np.testing.assert_array_equal(a, b)


def test_config_block_round_trip_and_errors():
  block = A.config_block(zoom=(0.5, 2.0), hflip_prob=0.5)
  cfg = A.from_config(block)
  assert cfg.zoom == (0.5, 2.0) and cfg.hflip_prob == 0.5 and cfg.rotate_degrees == 0.0
  hash(cfg)  # jit needs it static
  with pytest.raises(ValueError, match="no option 'rotation'"):
    A.config_block(rotation=10)
  with pytest.raises(ValueError, match=r"augment\.zoom=\(2\.0, 1\.0\).*min <= max"):
    A.AugmentConfig(zoom=(2.0, 1.0))
  with pytest.raises(ValueError, match=r"augment\.hflip_prob=1\.5"):
    A.AugmentConfig(hflip_prob=1.5)
  with pytest.raises(ValueError, match="image_interpolation"):
    A.AugmentConfig(image_interpolation="cubic")


def test_augmentation_reaches_the_train_step_and_dataset_presets_are_valid():
  from segjax import config as config_lib  # pylint: disable=import-outside-toplevel
  c = config_lib.default_config()
  assert A.from_config(c.augment) == A.AugmentConfig(hflip_prob=0.5)
  assert datasets.get_spec("shapes").num_classes > 0
