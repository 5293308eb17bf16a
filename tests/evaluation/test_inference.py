"""segjax.evaluation.inference against independent references: whole-image nets, brute-force window loops, torch resizes."""

import tracemalloc

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from segjax import forward, models
from segjax.evaluation import inference, tiling
from segjax.training import steps
from tests.conftest import predict_logits

K = 3
MEAN, STD = (120.0, 110.0, 100.0), (60.0, 50.0, 70.0)


class ConvNet(nn.Module):
  """`layers` SAME-padded 3x3 convolutions (receptive field 2 * layers + 1) and a 1x1 classifier."""
  num_classes: int = K
  layers: int = 2
  kernel: int = 3

  @nn.compact
  def __call__(self, x, *, train):
    for _ in range(self.layers):
      x = jnp.tanh(nn.Conv(4, (self.kernel, self.kernel))(x))
    return nn.Conv(self.num_classes, (1, 1))(x)


def _member(model, seed=0, shape=(1, 8, 8, 3), **kwargs):
  # Random numpy values in the parameters' shapes: Flax's init compiles threefry sampling (seconds per model).
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False))
  rng = np.random.RandomState(seed)
  variables = jax.tree.map(lambda s: (rng.normal(size=s.shape) / np.sqrt(np.prod(s.shape[:-1]) if len(s.shape) > 1
                                                                         else 10.0)).astype(np.float32), shapes)
  return inference.Member(model, variables, kwargs.pop("mean", MEAN), kwargs.pop("std", STD), **kwargs)


def _image(h, w, seed=0):
  return np.random.RandomState(seed).randint(0, 256, (h, w, 3)).astype(np.uint8)


def _apply(member, x):
  """The member's logits [B, H, W, K] of a normalised [B, H, W, C] batch (jitted: eager Flax is slow)."""
  return np.asarray(jax.jit(member.model.apply, static_argnames="train")(member.variables, jnp.asarray(x),
                                                                          train=False))


def _net(member, image):
  """The member's logits [H, W, K] of an image [H, W, C] (uint8: normalised here; float: as is), SAME nets."""
  x = (np.asarray(image, np.float32) - np.float32(MEAN)) / np.float32(STD) if image.dtype == np.uint8 else image
  return _apply(member, x[None])[0]


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _segment(members, image, **params):
  return inference.Segmenter(members, K, inference.InferenceParams(**params)).image_scores(image)


def _mmseg_windows(size, tile, stride):
  """MMSegmentation's slide_inference window loop, transcribed (mmseg/models/segmentors/encoder_decoder.py)."""
  grids = max(size - tile + stride - 1, 0) // stride + 1
  out = []
  for i in range(grids):
    y1 = i * stride
    y2 = min(y1 + tile, size)
    out.append(max(y2 - tile, 0))
  return out


def _brute_slide(member, image, tile, stride, weight):
  """sum over windows of weight * net(window) / sum of weights, windows of the zero-padded normalised image."""
  h, w = image.shape[:2]
  x = (image.astype(np.float32) - np.float32(MEAN)) / np.float32(STD)
  ph, pw = max(h, tile[0]), max(w, tile[1])
  x = np.pad(x, ((0, ph - h), (0, pw - w), (0, 0)))
  total, count = np.zeros((ph, pw, K), np.float64), np.zeros((ph, pw), np.float64)
  for y in _mmseg_windows(ph, tile[0], stride[0]):
    for xx in _mmseg_windows(pw, tile[1], stride[1]):
      total[y:y + tile[0], xx:xx + tile[1]] += weight[..., None] * _net(member, x[y:y + tile[0], xx:xx + tile[1]])
      count[y:y + tile[0], xx:xx + tile[1]] += weight
  return (total / count[..., None])[:h, :w], count[:h, :w]


def _clean(size, tile, stride, radius):
  """[size] bool: pixels that every window containing them contains with their whole receptive field (the part
  inside the image: at the image border both the window and the whole image see the same zero padding)."""
  ok = np.ones(size, bool)
  for start in _mmseg_windows(size, tile, stride):
    for p in range(start, start + tile):
      top_ok = start == 0 or p - start >= radius
      bottom_ok = start + tile == size or start + tile - 1 - p >= radius
      ok[p] &= top_ok and bottom_ok
  return ok


# A pixel of a window sees the zero padding at the window's border where the whole image has real pixels, so the
# average of the windows covering it equals the whole-image output exactly only when EVERY window covering it
# holds its receptive field (radius = number of 3x3 layers). With overlap >= r - 1 every pixel has at least one
# such window (the condition for crop-and-stitch), yet MMSegmentation's average also takes the others: equality
# holds on the `_clean` pixels, which this test computes independently of segjax, and fails on the rest.
def test_slide_equals_whole_on_pixels_every_window_sees_fully():
  layers, tile, stride = 2, (16, 16), (8, 8)  # radius 2, overlap 8 >= r - 1 = 4
  member = _member(ConvNet(layers=layers))
  image = _image(40, 48)
  whole = _segment([member], image, merge="logits")
  np.testing.assert_allclose(whole, _net(member, image), atol=1e-6)
  slide = _segment([member], image, mode="slide", tile_size=tile, stride=stride, merge="logits", tile_batch=3)
  clean = _clean(40, 16, 8, layers)[:, None] & _clean(48, 16, 8, layers)[None, :]
  assert clean.mean() > 0.15, clean.mean()
  np.testing.assert_allclose(slide[clean], whole[clean], atol=2e-5)
  diff = np.abs(slide - whole).max(-1)
  assert (diff[~clean] > 1e-4).mean() > 0.9  # the clean set is tight: elsewhere the padding shows


def test_slide_differs_from_whole_where_no_window_sees_the_receptive_field():
  layers, tile, stride = 3, (16, 16), (14, 14)  # radius 3, overlap 2 < r - 1 = 6
  member = _member(ConvNet(layers=layers))
  image = _image(30, 30)
  whole = _segment([member], image, merge="logits")
  slide = _segment([member], image, mode="slide", tile_size=tile, stride=stride, merge="logits")
  # Rows 13..16 lie within 3 pixels of the inner border of every window holding them ([0, 16), [14, 30)): no
  # window sees their receptive field, so no averaging can give the whole-image value.
  assert not _clean(30, 16, 14, layers)[13:17].any()
  assert (np.abs(slide[13:17, 5:25] - whole[13:17, 5:25]).max(-1) > 1e-4).mean() > 0.9
  np.testing.assert_allclose(slide[:11, :11], whole[:11, :11], atol=2e-5)  # inside one window only


@pytest.mark.parametrize("weighting", ["mean", "gaussian"])
@pytest.mark.parametrize("size", [(37, 50), (11, 20)])  # the second is smaller than a tile: padded, cropped
def test_slide_equals_brute_force_window_loop(weighting, size):
  member = _member(ConvNet(layers=2))
  image = _image(*size, seed=1)
  tile, stride, sigma = (16, 16), (10, 12), 0.2
  weight = tiling.gaussian_weights(tile, sigma) if weighting == "gaussian" else np.ones(tile)
  expected, count = _brute_slide(member, image, tile, stride, weight)
  got = _segment([member], image, mode="slide", tile_size=tile, stride=stride, weighting=weighting,
                 gaussian_sigma=sigma, merge="logits", tile_batch=4)
  np.testing.assert_allclose(got, expected, atol=2e-5)
  if weighting == "mean" and size == (37, 50):
    # Windows [0, 16), [10, 26), [20, 36) and the last one aligned to the border, [21, 37).
    assert count[:, 0].tolist() == [1] * 10 + [2] * 6 + [1] * 4 + [2] * 1 + [3] * 5 + [2] * 10 + [1] * 1


def test_gaussian_weights_equal_2d_formula():
  h, w, sigma = 12, 7, 0.125
  yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  sy, sx = sigma * h, sigma * w
  expected = np.exp(-((yy - (h - 1) / 2) ** 2 / (2 * sy**2) + (xx - (w - 1) / 2) ** 2 / (2 * sx**2)))
  got = tiling.gaussian_weights((h, w), sigma)
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  assert got.max() < 1.0 + 1e-6 and got.dtype == np.float32


def test_reflect_index_equals_numpy_pad():
  for n in (1, 2, 5):
    x = np.arange(n)
    idx = np.arange(-13, n + 13)
    np.testing.assert_array_equal(x[tiling.reflect_index(idx, n)], np.pad(x, 13, mode="reflect"))


def test_overlap_tile_equals_whole_valid_inference():
  # Output tiles of 20 and 28 are no multiple of the pooling grid 8, so tiles overlap and the last one overhangs
  # the border; offsets stay multiples of 8.
  depth, tile = 3, (20, 28)
  model = models.build_model("unet_valid", K, depth=depth, base_features=2, dropout_rate=0.0)
  assert tiling.pooling_grid(model) == 2**depth
  size = model.input_size_for(1)
  member = _member(model, shape=(1, size, size, 3))
  image = _image(53, 70, seed=2)
  state = type("State", (), {"params": member.variables["params"], "batch_stats": {}})
  predict = jax.jit(lambda x: predict_logits(state, x, model=model, mean=MEAN, std=STD))
  expected = np.asarray(predict(image[None]))[0]
  got = _segment([member], image, mode="overlap_tile", tile_size=tile, merge="logits", tile_batch=3)
  np.testing.assert_allclose(got, expected, atol=1e-5)
  # The alignment matters: the same window shifted by 2 pixels (off the pooling grid) gives other logits.
  m = model.input_margin
  x = np.pad((image.astype(np.float32) - np.float32(MEAN)) / np.float32(STD), ((m, m + 40), (m, m + 40), (0, 0)),
             mode="reflect")
  win = _apply(member, x[None, 2:2 + tile[0] + 2 * m, :tile[1] + 2 * m])[0]
  assert np.abs(win - expected[2:2 + tile[0], :tile[1]]).max() > 1e-4


def _torch_resize(x, h, w):
  t = torch.from_numpy(np.array(x, np.float32)).permute(2, 0, 1)[None]  # a writable copy
  return torch.nn.functional.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)[0].permute(
      1, 2, 0).numpy()


@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_flip_tta_is_mean_of_flipped_back_predictions(mode):
  member = _member(ConvNet(layers=2))
  image = _image(23, 30, seed=3)
  tiled = dict(mode=mode, tile_size=(16, 16), stride=(12, 12)) if mode == "slide" else dict(mode=mode)
  got = _segment([member], image, hflip=True, **tiled)
  plain = _segment([member], image, merge="logits", **tiled)
  flipped = _segment([member], np.ascontiguousarray(image[:, ::-1]), merge="logits", **tiled)
  np.testing.assert_allclose(got, (_softmax(plain) + _softmax(flipped[:, ::-1])) / 2, atol=1e-5)
  both = _segment([member], image, hflip=True, vflip=True, merge="logits", **tiled)
  views = [plain, flipped[:, ::-1]] + [
      _segment([member], np.ascontiguousarray(v), merge="logits", **tiled)[::-1, ::f]
      for v, f in ((image[::-1], 1), (image[::-1, ::-1], -1))]
  np.testing.assert_allclose(both, np.mean(views, 0), atol=1e-5)


def test_multiscale_tta_against_torch_resizes():
  member = _member(ConvNet(layers=2))
  image = _image(23, 30, seed=4)
  got = _segment([member], image, scales=(0.5, 1.0, 1.5), merge="logits")
  x = (image.astype(np.float32) - np.float32(MEAN)) / np.float32(STD)
  expected = [_net(member, x)]
  for s in (0.5, 1.5):
    h, w = int(23 * s + 0.5), int(30 * s + 0.5)
    expected.append(_torch_resize(_net(member, _torch_resize(x, h, w)), 23, 30))
  np.testing.assert_allclose(got, np.mean(expected, 0), atol=2e-4)
  # The same composition through the tiled path: slide of the resized (float) image, resized back.
  slide = dict(mode="slide", tile_size=(16, 16), stride=(12, 12), merge="logits")
  tiled = _segment([member], image, scales=(0.5, 1.0, 1.5), **slide)
  expected = [_segment([member], image, **slide)]
  for s in (0.5, 1.5):
    h, w = int(23 * s + 0.5), int(30 * s + 0.5)
    expected.append(_torch_resize(_segment([member], _torch_resize(image, h, w), **slide), 23, 30))
  np.testing.assert_allclose(tiled, np.mean(expected, 0), atol=2e-4)


def test_ensemble_is_mean_of_member_softmaxes():
  a = _member(ConvNet(layers=1), seed=1)
  b = _member(ConvNet(layers=2), seed=2, mean=(0.0,), std=(1.0,), normalization="per_image")
  image = _image(20, 24, seed=5)
  got = _segment([a, b], image)
  x = image.astype(np.float64)
  per_image = ((x - x.mean()) / x.std()).astype(np.float32)
  expected = (_softmax(_net(a, image)) + _softmax(_net(b, per_image))) / 2
  np.testing.assert_allclose(got, expected, atol=1e-5)
  # The tiled path (one window: the image), with the host's per-image statistics.
  np.testing.assert_allclose(_segment([a, b], image, mode="slide", tile_size=(20, 24), stride=(20, 24)), expected,
                             atol=1e-5)


def test_bad_params_name_the_key():
  with pytest.raises(ValueError, match=r"config.inference.stride=\(20, 8\).*must not exceed"):
    inference.InferenceParams(mode="slide", tile_size=(16, 16), stride=(20, 8))
  unet = models.build_model("unet", K, depth=2, base_features=2)
  with pytest.raises(ValueError, match=r"tile_size=\(18, 16\).*multiples of 4"):
    inference.InferenceParams(mode="slide", tile_size=(18, 16), stride=(8, 8)).check_model(unet)
  with pytest.raises(ValueError, match="overlap_tile.*use --config.inference.mode=slide"):
    inference.InferenceParams(mode="overlap_tile", tile_size=(16, 16)).check_model(unet)
  valid = models.build_model("unet_valid", K, depth=2, base_features=2)
  with pytest.raises(ValueError, match=r"tile_size=\(22, 20\).*22 is not, the next one is 24"):
    inference.InferenceParams(mode="overlap_tile", tile_size=(22, 20)).check_model(valid)


def test_streaming_large_image_bounded_memory():
  # A 1x1 net: every tiling equals the whole-image output, so a crop is the unstreamed reference.
  member = _member(ConvNet(layers=1, kernel=1))
  h = w = 3000
  image = _image(h, w, seed=6)
  seg = inference.Segmenter([member], K, inference.InferenceParams(
      mode="slide", tile_size=(256, 256), stride=(192, 192), tile_batch=8))
  seg.predict_image(image[:300, :300])  # compile outside the measurement
  full_scores = h * w * K * 4  # 108 MB: what must never be held
  tracemalloc.start()
  try:
    labels = seg.predict_image(image)
    _, peak = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
  # Measured 37.7 MiB: labels (8.6 MiB) + the band of tile + stride rows (sums 17.6 MiB, weights 5.9 MiB) + the
  # merge of one chunk of finished rows; the full score map would be 103 MiB.
  assert peak < 0.45 * full_scores, f"peak {peak / 2**20:.1f} MiB"
  crop = image[1000:1400, 2700:3000]
  np.testing.assert_array_equal(labels[1000:1400, 2700:3000], _net(member, crop).argmax(-1))
  assert labels.dtype == np.uint8


def test_params_from_config_defaults_and_errors():
  from tests.conftest import tiny_config  # pylint: disable=import-outside-toplevel
  config = tiny_config("unused", **{"inference.mode": "slide"})  # crop 32 x 32, U-Net depth 2
  params = inference.InferenceParams.from_config(config)
  assert params.tile_size == (32, 32) and params.stride == (22, 22)
  config = tiny_config("unused", **{"inference.mode": "overlap_tile"})
  with pytest.raises(ValueError, match="config.inference.mode='overlap_tile': UNet pads"):
    inference.InferenceParams.from_config(config)
  config = tiny_config("unused", **{"inference.mode": "overlap_tile", "model": models.model_config(
      "unet_valid", depth=2, base_features=2), "dataset.crop_size": (60, 64)})
  assert inference.InferenceParams.from_config(config).tile_size == (20, 24)  # UNetValid's output of the crop
