"""Tests for segjax.data.folder: images + masks folders as a tfds builder.

Every dataset is written here with PIL into tmp_path; decoded examples are
compared with the arrays written (or PIL's decode of the written files), and
colour-coded masks with a per-pixel brute-force reference.
"""

import dataclasses
import math
import os
import pathlib

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from segjax.data import folder

_NO_GCS = tfds.download.DownloadConfig(try_download_gcs=False)


def _save(path: pathlib.Path, array, mode=None, palette=None) -> pathlib.Path:
  """Writes `array` with PIL; the format follows the extension."""
  path.parent.mkdir(parents=True, exist_ok=True)
  array = np.asarray(array)
  if mode in ("P", "I;16"):
    img = Image.frombytes(mode, array.shape[1::-1], array.tobytes())
    if mode == "P":
      img.putpalette(palette or [v for i in range(256) for v in (i, 3, 7)])
  else:
    img = Image.fromarray(array)
  img.save(path)
  return path


def _pil(path, mode=None) -> np.ndarray:
  with Image.open(path) as img:
    return np.asarray(img.convert(mode) if mode else img)


def _prepare(params, data_dir, name="custom"):
  builder = folder.make_builder(params, name=name, data_dir=data_dir)
  if not builder.is_prepared():
    builder.download_and_prepare(download_config=_NO_GCS)
  return builder


def _by_stem(builder, split):
  source = builder.as_data_source(split)
  return {source[i]["filename"].decode(): source[i]
          for i in range(len(source))}


def _params(root, **kw):
  kw.setdefault("class_names", ("a", "b", "c", "d"))
  kw.setdefault("split_fractions", (("train", 1.0),))
  return folder.FolderParams(images_dir=root / "images",
                             masks_dir=root / "masks", **kw)


def _simple(root, stems=("s0", "s1", "s2"), shape=(6, 8), seed=0):
  rng = np.random.default_rng(seed)
  for stem in stems:
    _save(root / "images" / f"{stem}.png",
          rng.integers(0, 256, shape + (3,), np.uint8))
    _save(root / "masks" / f"{stem}.png",
          rng.integers(0, 4, shape, np.uint8))
  return root


# ------------------------------------------------------------ index masks


def test_index_masks_mixed_formats_sizes_and_channels(tmp_path):
  rng = np.random.default_rng(0)
  root = tmp_path / "src"
  # (image file, image array, mask file, mask array, mask mode)
  cases = {
      "a": ("a.png", (8, 10, 3), "a.png", "L"),
      "b": ("b.jpg", (12, 9, 3), "b.png", "P"),
      "c": ("c.bmp", (16, 20, 3), "c.BMP", "L"),
      "d": ("d.TIF", (9, 11, 4), "d.tif", "L"),
      "e": ("e.gif", (7, 5), "e.png", "P"),
  }
  written = {}
  for stem, (image_name, shape, mask_name, mode) in cases.items():
    image = rng.integers(0, 256, shape, np.uint8)
    _save(root / "images" / image_name, image)
    ids = rng.integers(0, 4, shape[:2], np.uint8)
    ids[0, :3] = 255  # Ignore index: stays 255.
    _save(root / "masks" / mask_name, ids, mode=mode)
    written[stem] = (root / "images" / image_name, ids)
  (root / "images" / "notes.txt").write_text("not an image")
  (root / "images" / ".hidden.png").write_bytes(b"")

  builder = _prepare(_params(root), tmp_path / "data")
  got = _by_stem(builder, "train")
  assert sorted(got) == sorted(cases)
  for stem, (image_path, ids) in written.items():
    np.testing.assert_array_equal(got[stem]["image"],
                                  _pil(image_path, "RGB"))
    np.testing.assert_array_equal(got[stem]["label"][..., 0], ids)
    assert got[stem]["label"].dtype == np.uint8

  gray = _prepare(_params(root, num_channels=1), tmp_path / "data")
  assert gray.builder_config.name != builder.builder_config.name
  got = _by_stem(gray, "train")
  for stem, (image_path, ids) in written.items():
    assert got[stem]["image"].shape == ids.shape + (1,)
    np.testing.assert_array_equal(got[stem]["image"][..., 0],
                                  _pil(image_path, "L"))
    np.testing.assert_array_equal(got[stem]["label"][..., 0], ids)


def test_16bit_index_masks_and_ignore_index(tmp_path):
  root = tmp_path / "src"
  _save(root / "images" / "x.png", np.zeros((5, 6, 3), np.uint8))
  ids = np.arange(30, dtype=np.uint16).reshape(5, 6) % 4
  ids[2, 2:5] = 1000
  _save(root / "masks" / "x.png", ids, mode="I;16")
  params = _params(root, ignore_index=1000)
  got = _by_stem(_prepare(params, tmp_path / "data"), "train")["x"]
  np.testing.assert_array_equal(got["label"][..., 0],
                                np.where(ids == 1000, 255, ids))


# -------------------------------------------------------------- rgb masks

_PALETTE = ((200, 30, 30), (30, 30, 200), (30, 200, 30))
_VOID = (0, 0, 0)
_TOL = 130.0


def _brute_force(rgb, palette, tolerance, ignore_color):
  """Per-pixel reference: nearest colour, ties to void then lower id."""
  out = np.zeros(rgb.shape[:2], np.uint8)
  candidates = [(ignore_color, 255)] + [(c, i) for i, c in enumerate(palette)]
  for y in range(rgb.shape[0]):
    for x in range(rgb.shape[1]):
      best, label = None, 255
      for colour, cls in candidates:
        d = math.dist([int(v) for v in rgb[y, x]], colour)
        if best is None or d < best:
          best, label = d, cls
      out[y, x] = label if best <= tolerance else 255
  return out


def test_rgb_masks_antialiased_edges(tmp_path):
  red, blue = np.array(_PALETTE[0]), np.array(_PALETTE[1])
  mask = np.zeros((8, 10, 3), np.uint8)
  mask[:, :4] = red
  mask[:, 6:] = blue
  mask[:, 4] = (red + blue) // 2  # Exact midpoint: a tie, goes to class 0.
  mask[:, 5] = (red + 3 * blue) // 4  # Nearer blue, within tolerance.
  mask[0, 0] = (255, 255, 255)  # Far from every colour.
  mask[1, 0] = (5, 5, 5)  # Near the void colour.
  mask[2, 0] = red + (3, -2, 4)  # JPEG-like noise.
  mask[3, 0] = _PALETTE[2]
  root = tmp_path / "src"
  _save(root / "images" / "edge.png", np.zeros((8, 10, 3), np.uint8))
  _save(root / "masks" / "edge.png", mask)
  # A noisy mask, stored as JPEG (allowed for rgb masks).
  rng = np.random.default_rng(1)
  noisy = np.asarray(_PALETTE + (_VOID,))[rng.integers(0, 4, (12, 14))]
  noisy = noisy + rng.normal(0, 40, noisy.shape)
  far = rng.random((12, 14)) < 0.2
  noisy[far] = rng.integers(0, 256, (far.sum(), 3))
  _save(root / "images" / "noisy.jpg", np.zeros((12, 14, 3), np.uint8))
  _save(root / "masks" / "noisy.jpg", np.clip(noisy, 0, 255).astype(np.uint8))

  # Pixels beyond tolerance (white, far JPEG noise) are left unlabelled.
  params = _params(root, class_names=("red", "blue", "green"),
                   mask_format="rgb", palette=_PALETTE, ignore_color=_VOID,
                   palette_tolerance=_TOL, off_palette="ignore")
  got = _by_stem(_prepare(params, tmp_path / "data"), "train")
  labels = got["edge"]["label"][..., 0]
  want = _brute_force(mask, _PALETTE, _TOL, _VOID)
  np.testing.assert_array_equal(labels, want)
  # The reference agrees with what the mask was drawn to mean.
  assert (labels[4:, :5] == 0).all() and (labels[:, 5:] == 1).all()
  assert labels[0, 0] == 255 and labels[1, 0] == 255
  assert labels[2, 0] == 0 and labels[3, 0] == 2
  decoded = _pil(root / "masks" / "noisy.jpg", "RGB")
  want = _brute_force(decoded, _PALETTE, _TOL, _VOID)
  np.testing.assert_array_equal(got["noisy"]["label"][..., 0], want)
  assert 0 < (want == 255).sum() < want.size  # Both outcomes occur.


def test_off_palette_colours_are_an_error_by_default(tmp_path):
  red = np.array(_PALETTE[0])
  mask = np.zeros((6, 8, 3), np.uint8)
  mask[:] = red
  mask[0, :5] = (255, 255, 255)  # 5 px, 322.9 from red (nearest).
  mask[1, :2] = (128, 0, 0)  # 2 px, 83.6 from red.
  mask[2, 0] = red + (0, 0, 40)  # 1 px, 40.0 from red.
  mask[3, 0] = (10, 10, 10)  # Within 30 of void: not an error.
  mask[4, 0] = red + (10, -10, 10)  # Within 30 of red: not an error.
  root = tmp_path / "src"
  _save(root / "images" / "m.png", np.zeros((6, 8, 3), np.uint8))
  _save(root / "masks" / "m.png", mask)
  _save(root / "images" / "n.png", np.zeros((6, 8, 3), np.uint8))
  _save(root / "masks" / "n.png",
        np.broadcast_to(red, (6, 8, 3)).astype(np.uint8))
  params = _params(root, class_names=("red", "blue", "green"),
                   mask_format="rgb", palette=_PALETTE, ignore_color=_VOID)
  assert params.off_palette == "error" and params.palette_tolerance == 30
  with pytest.raises(ValueError) as info:
    _prepare(params, tmp_path / "data")
  message = str(info.value)
  for part in (f"rgb mask {root / 'masks' / 'm.png'} has 8 pixels in 3 "
               "colours farther than palette_tolerance=30",
               "(255, 255, 255) x 5 px, nearest (200, 30, 30) (class 'red') "
               f"at distance {math.dist((255,) * 3, red):.1f}; (128, 0, 0) "
               "x 2 px, nearest (200, 30, 30) (class 'red') at distance "
               f"{math.dist((128, 0, 0), red):.1f}; (200, 30, 70) x 1 px",
               "at distance 40.0.", "folder.palette ", "palette_tolerance "
               "above", "folder.off_palette='ignore'"):
    assert part in message, (part, message)
  # Nearest colour the void colour: named as such.
  mask[:] = red
  mask[0, 0] = (0, 0, 90)
  _save(root / "masks" / "m.png", mask)
  with pytest.raises(ValueError, match=r"\(0, 0, 90\) x 1 px, nearest "
                     r"\(0, 0, 0\) \(ignore_color\) at distance 90\.0"):
    _prepare(params, tmp_path / "data")
  # "ignore" leaves the same pixels unlabelled, as the brute force does.
  mask[1, 1] = (255, 255, 255)
  _save(root / "masks" / "m.png", mask)
  ignoring = dataclasses.replace(params, off_palette="ignore")
  got = _by_stem(_prepare(ignoring, tmp_path / "data"), "train")
  want = _brute_force(mask, _PALETTE, 30.0, _VOID)
  np.testing.assert_array_equal(got["m"]["label"][..., 0], want)
  assert want[0, 0] == want[1, 1] == 255 and (want[2:] == 0).all()


def test_rgb_to_ids_matches_brute_force_random(tmp_path):
  del tmp_path
  rng = np.random.default_rng(2)
  rgb = rng.integers(0, 256, (20, 30, 3), np.uint8)
  rgb[::3] = np.asarray(_PALETTE)[rng.integers(0, 3, 30)]
  for tolerance in (0.0, 60.0, 1000.0):
    for void in (None, _VOID):
      got = folder.rgb_to_ids(rgb, _PALETTE, tolerance, void)
      want = _brute_force(rgb, _PALETTE, tolerance,
                          void if void else (-10**6,) * 3)
      np.testing.assert_array_equal(got, want)


# --------------------------------------------------------------- validity


def test_validity_mask(tmp_path):
  root = _simple(tmp_path / "src", stems=("p", "q"), shape=(6, 8))
  rng = np.random.default_rng(3)
  valid_p = rng.random((6, 8)) < 0.6
  valid_q = (rng.random((6, 8)) < 0.6).astype(np.uint8) * 7
  _save(root / "valid" / "p.png", valid_p)  # Mode "1".
  _save(root / "valid" / "q.bmp", valid_q)
  params = _params(root, validity_dir=root / "valid")
  got = _by_stem(_prepare(params, tmp_path / "data"), "train")
  for stem, valid in (("p", valid_p), ("q", valid_q != 0)):
    ids = _pil(root / "masks" / f"{stem}.png")
    np.testing.assert_array_equal(got[stem]["label"][..., 0],
                                  np.where(valid, ids, 255))


# ------------------------------------------------------------------ splits


def test_split_files(tmp_path):
  root = _simple(tmp_path / "src", stems=[f"s{i}" for i in range(6)])
  (tmp_path / "train.txt").write_text("# training files\ns3\n\ns0  # ok\ns5\n")
  (tmp_path / "val.txt").write_text("s1\ns2\n")
  params = _params(root, split_files={"train": tmp_path / "train.txt",
                                      "validation": tmp_path / "val.txt"})
  assert folder.spec_fields(params)[4] == ("train", "validation")
  builder = _prepare(params, tmp_path / "data")
  assert set(builder.info.splits) == {"train", "validation"}
  train = builder.as_data_source("train")
  # File order, and s4 (unlisted) is unused.
  assert [train[i]["filename"].decode() for i in range(3)] == ["s3", "s0",
                                                               "s5"]
  assert sorted(_by_stem(builder, "validation")) == ["s1", "s2"]


def test_seeded_split_is_deterministic_disjoint_covering(tmp_path):
  stems = [f"img_{i:02d}" for i in range(23)]
  fractions = (("train", 0.5), ("validation", 0.3), ("test", 0.2))
  params = _params(tmp_path, split_fractions=fractions, split_seed=4)
  splits = folder.assign_splits(params, stems)
  # Sizes: 11.5, 6.9, 4.6 -> floors 11, 6, 4; the two left over go to the
  # largest remainders (0.9, 0.6).
  assert {k: len(v) for k, v in splits.items()} == {
      "train": 11, "validation": 7, "test": 5}
  together = [s for v in splits.values() for s in v]
  assert sorted(together) == stems  # Disjoint and covering.
  for order in (stems[::-1], list(np.random.default_rng(0).permutation(
      stems))):
    assert folder.assign_splits(params, order) == splits
  other = folder.assign_splits(dataclasses.replace(params, split_seed=5),
                               stems)
  assert other != splits

  # Through the builder: two folders with the same files written in opposite
  # orders give the same split.
  names = [f"f{i}" for i in range(10)]
  got = []
  for k, order in enumerate((names, names[::-1])):
    root = _simple(tmp_path / f"src{k}", stems=order)
    params = _params(root, split_fractions=(("train", 0.7),
                                            ("validation", 0.3)))
    builder = _prepare(params, tmp_path / "data")
    got.append({s: sorted(_by_stem(builder, s)) for s in builder.info.splits})
  assert got[0] == got[1]
  assert len(got[0]["train"]) == 7 and len(got[0]["validation"]) == 3


# ------------------------------------------------------------------ errors


def _raises(params, match, data_dir=None):
  data_dir = data_dir or pathlib.Path(params.images_dir).parent / "data"
  with pytest.raises(ValueError, match=match):
    _prepare(params, data_dir)


def test_pairing_errors(tmp_path):
  root = tmp_path / "empty"
  (root / "images").mkdir(parents=True)
  (root / "masks").mkdir()
  _raises(_params(root), r"empty/images holds no images.*images_dir")

  root = _simple(tmp_path / "no_mask")
  (root / "masks" / "s1.png").unlink()
  _raises(_params(root), r"no_mask/images/s1\.png has no mask in .*masks.*"
          r"add .*masks/s1\.<ext>")

  root = _simple(tmp_path / "no_image")
  _save(root / "masks" / "extra.png", np.zeros((6, 8), np.uint8))
  _raises(_params(root), r"masks/extra\.png has no image in .*add .*"
          r"images/extra\.<ext>")

  root = _simple(tmp_path / "dup")
  _save(root / "images" / "s1.JPG", np.zeros((6, 8, 3), np.uint8))
  _raises(_params(root), r"images/s1\.JPG and .*images/s1\.png|"
          r"images/s1\.png and .*images/s1\.JPG")

  root = _simple(tmp_path / "jpeg_mask")
  (root / "masks" / "s0.png").unlink()
  _save(root / "masks" / "s0.jpg", np.zeros((6, 8), np.uint8))
  _raises(_params(root), r"masks/s0\.jpg is a JPEG.*PNG")

  root = _simple(tmp_path / "no_valid")
  _save(root / "valid" / "s0.png", np.ones((6, 8), np.uint8))
  _raises(_params(root, validity_dir=root / "valid"),
          r"images/s1\.png has no validity mask")


def test_pixel_errors(tmp_path):
  root = _simple(tmp_path / "bad_id")
  ids = np.zeros((6, 8), np.uint8)
  ids[1, 1] = 7
  _save(root / "masks" / "s2.png", ids)
  data_dir = tmp_path / "data"
  _raises(_params(root), r"masks/s2\.png holds id 7 .*0\.\.3 .*ignore_index",
          data_dir=data_dir)
  # A failed prepare leaves nothing behind: fixing the mask is enough.
  _save(root / "masks" / "s2.png", np.zeros((6, 8), np.uint8))
  assert len(_prepare(_params(root), data_dir).as_data_source("train")) == 3

  root = _simple(tmp_path / "size")
  _save(root / "masks" / "s1.png", np.zeros((6, 9), np.uint8))
  _raises(_params(root), r"masks/s1\.png is 6x9 but its image .*"
          r"images/s1\.png is 6x8")

  root = _simple(tmp_path / "vsize")
  for stem in ("s0", "s1", "s2"):
    _save(root / "valid" / f"{stem}.png", np.ones((5, 8), np.uint8))
  _raises(_params(root, validity_dir=root / "valid"),
          r"valid/s0\.png is 5x8 but its image .*images/s0\.png is 6x8")

  root = _simple(tmp_path / "rgb_index")
  _save(root / "masks" / "s0.png", np.zeros((6, 8, 3), np.uint8))
  _raises(_params(root), r"masks/s0\.png has mode RGB.*mask_format='rgb'")

  root = _simple(tmp_path / "disguised")  # JPEG bytes behind a .png name.
  Image.fromarray(np.zeros((6, 8), np.uint8)).save(root / "masks" / "s1.png",
                                                   format="JPEG")
  _raises(_params(root), r"index mask .*masks/s1\.png is a JPEG.*PNG")

  root = _simple(tmp_path / "wide")
  _save(root / "images" / "s0.png", np.zeros((6, 8), np.uint16), mode="I;16")
  _raises(_params(root), r"images/s0\.png has mode I;16.*8-bit")


def test_split_errors(tmp_path):
  root = _simple(tmp_path / "src")
  a, b = tmp_path / "a.txt", tmp_path / "b.txt"
  a.write_text("s0\n\ns9\n")
  b.write_text("s1\n")
  splits = (("train", str(a)), ("validation", str(b)))
  _raises(_params(root, split_files=splits),
          r"a\.txt, line 3: 's9' is not the stem")
  a.write_text("s0\ns1\n")
  _raises(_params(root, split_files=splits),
          r"'s1' is in split 'train' and in split 'validation'.*b\.txt")
  a.write_text("s0\ns0\n")
  _raises(_params(root, split_files=splits), r"a\.txt, line 2: 's0' is "
          r"listed twice")
  _raises(_params(root, split_fractions=(("train", 0.9), ("validation", 0.1))),
          r"split 'validation' gets no files .*split_fractions")


@pytest.mark.parametrize("change, match", [
    (dict(images_dir="nowhere"), r"folder\.images_dir='nowhere': no such"),
    (dict(validity_dir="nowhere"), r"folder\.validity_dir='nowhere'"),
    (dict(class_names=[str(i) for i in range(256)]),
     r"folder\.class_names=.*1 to 255 distinct"),
    (dict(class_names=("a", "a")), r"folder\.class_names"),
    (dict(palette=((1, 2, 3),)), r"folder\.palette=.*one \(R, G, B\)"),
    (dict(mask_format="rgb"), r"folder\.palette=None: rgb masks"),
    (dict(mask_format="rgb", palette=((1, 2, 3),) * 4), r"distinct colours"),
    (dict(mask_format="rgb", palette=_PALETTE + ((9, 9, 9),),
          ignore_color=(9, 9, 9)), r"folder\.ignore_color=.*not a palette"),
    (dict(mask_format="rgb", palette=_PALETTE + ((9, 9, 9),),
          palette_tolerance=-1), r"folder\.palette_tolerance=-1\.0"),
    (dict(mask_format="png"), r"folder\.mask_format='png'"),
    (dict(off_palette="skip"), r"folder\.off_palette='skip': choose 'error'"),
    (dict(ignore_index=2), r"folder\.ignore_index=2: must be >= .*\(4\)"),
    (dict(num_channels=2), r"folder\.num_channels=2"),
    (dict(split_fractions=(("train", 0.5), ("test", 0.4))),
     r"folder\.split_fractions=.*sum to 1"),
    (dict(split_fractions=(("all", 1.0),)), r"'all' is reserved"),
    (dict(split_files=(("train", "missing.txt"),)),
     r"folder\.split_files=.*missing\.txt is not a file"),
])
def test_check_params_errors(tmp_path, change, match):
  params = dataclasses.replace(_params(_simple(tmp_path)), **change)
  with pytest.raises(ValueError, match=match):
    folder.check_params(params)
  with pytest.raises(ValueError, match=match):
    folder.make_builder(params, data_dir=tmp_path / "data")


# --------------------------------------------------------- caching, config


def test_config_name_tracks_params_and_files(tmp_path, monkeypatch):
  root = _simple(tmp_path / "src")
  data_dir = tmp_path / "data"
  params = _params(root)

  def name(p, **kw):
    return folder.make_builder(p, data_dir=data_dir, **kw).builder_config.name

  base = name(params)
  assert base.startswith("custom-") and len(base) == len("custom-") + 8
  assert name(params, name="mine") == "mine-" + base[-8:]
  assert name(dataclasses.replace(params)) == base
  # Relative paths mean the same folders.
  monkeypatch.chdir(tmp_path)
  assert name(_params(pathlib.Path("src"))) == base
  _save(root / "valid" / "s0.png", np.ones((6, 8), np.uint8))
  for stem in ("s1", "s2"):
    _save(root / "valid" / f"{stem}.png", np.ones((6, 8), np.uint8))
  changes = dict(
      class_names=("a", "b", "c", "d", "e"), palette=((1, 1, 1),) * 4,
      ignore_index=254, palette_tolerance=3.0, off_palette="ignore",
      ignore_color=(1, 2, 3),
      validity_dir=str(root / "valid"), num_channels=1,
      split_fractions=(("train", 0.6), ("test", 0.4)), split_seed=1,
      mask_format="rgb")
  seen = {base}
  for field, value in changes.items():
    if field == "mask_format":  # rgb needs distinct palette colours.
      changed = dataclasses.replace(params, mask_format="rgb",
                                    palette=_PALETTE + ((9, 9, 9),))
    else:
      changed = dataclasses.replace(params, **{field: value})
    new = name(changed)
    assert new not in seen, field
    seen.add(new)
  (tmp_path / "t.txt").write_text("s0\n")
  with_file = dataclasses.replace(params, split_files=(("train", "t.txt"),))
  listed = name(with_file)
  assert listed not in seen
  (tmp_path / "t.txt").write_text("s1\n")  # Same size, other content.
  assert name(with_file) != listed
  # Touching a file is enough (size and mtime are checked, not contents).
  os.utime(root / "images" / "s2.png", ns=(10**18, 10**18))
  assert name(params) != base

  # Editing a mask prepares afresh instead of reusing stale data.
  builder = _prepare(params, data_dir)
  assert builder.as_data_source("train")[0]["label"].max() <= 3
  ids = np.full((6, 8), 2, np.uint8)
  _save(root / "masks" / "s0.png", ids)
  os.utime(root / "masks" / "s0.png", ns=(1, 1))  # Even with an old mtime.
  fresh = folder.make_builder(params, data_dir=data_dir)
  assert fresh.builder_config.name != builder.builder_config.name
  assert not fresh.is_prepared()
  fresh.download_and_prepare(download_config=_NO_GCS)
  np.testing.assert_array_equal(
      _by_stem(fresh, "train")["s0"]["label"][..., 0], ids)
  # The same params again reuse the prepared copy.
  assert folder.make_builder(params, data_dir=data_dir).is_prepared()


def test_config_block_round_trip_and_spec(tmp_path):
  block = folder.config_block()
  # reduce_zero_label comes from config.dataset, not from the folder block.
  fields = [f for f in dataclasses.fields(folder.FolderParams) if f.name != "reduce_zero_label"]
  assert sorted(block.keys()) == sorted(f.name for f in fields)
  for f in fields:
    want = None if f.default is dataclasses.MISSING else f.default
    assert block[f.name] == want, f.name
  with pytest.raises(ValueError, match=r"folder\.images_dir is not set"):
    folder.params_from_config(block)
  block.images_dir = str(tmp_path / "images")
  block.masks_dir = str(tmp_path / "masks")
  block.class_names = ("bg", "cell")
  block.ignore_color = (1, 2, 3)
  block.split_files = (("train", "a.txt"),)
  params = folder.params_from_config(block)
  assert params == folder.FolderParams(
      images_dir=str(tmp_path / "images"), masks_dir=str(tmp_path / "masks"),
      class_names=("bg", "cell"), ignore_color=(1, 2, 3),
      split_files=(("train", "a.txt"),))
  hash(params)  # Hashable, so usable as a cache key.

  names, palette, ignore, channels, splits = folder.spec_fields(
      dataclasses.replace(params, split_files=None))
  assert (names, ignore, channels, splits) == (
      ("bg", "cell"), 255, 3, ("train", "validation"))
  assert palette == ((0, 0, 0), (230, 25, 75))
  many = folder.derive_palette(255)
  assert len(set(many)) == 255 and many == folder.derive_palette(255)
  assert all(len(c) == 3 and all(0 <= v <= 255 and isinstance(v, int)
                                 for v in c) for c in many)
  given = ((1, 2, 3), (4, 5, 6))
  assert folder.spec_fields(
      dataclasses.replace(params, palette=given))[1] == given


def test_reduce_zero_label_masks_hold_one_more_id_and_reduce_like_mmseg(tmp_path):
  """ADE20K-style masks: 0 is "other", 1..K are the K listed classes. Preparing accepts id K only with
  reduce_zero_label; the pipeline's labels then equal MMSegmentation's transform (0 -> 255, c -> c - 1)."""
  from segjax import metrics  # pylint: disable=import-outside-toplevel
  from segjax.data import pipeline  # pylint: disable=import-outside-toplevel

  root = tmp_path / "src"
  rng = np.random.default_rng(3)
  _save(root / "images" / "x.png", rng.integers(0, 256, (6, 8, 3), np.uint8))
  raw = rng.integers(0, 5, (6, 8), np.uint8)  # 0..4 for the 4 class names
  raw[0, :3] = 255
  _save(root / "masks" / "x.png", raw)
  with pytest.raises(ValueError, match="holds id 4"):
    _prepare(_params(root), tmp_path / "plain")
  params = dataclasses.replace(_params(root), reduce_zero_label=True)
  stored = _by_stem(_prepare(params, tmp_path / "reduced"), "train")["x"]
  ex = pipeline.to_example(stored, 255, 4, reduce_zero_label=True)
  reference = metrics.reduce_zero_label(raw, 255)
  np.testing.assert_array_equal(ex.weight, reference != 255)
  np.testing.assert_array_equal(ex.label[reference != 255], reference[reference != 255])


# ------------------------------------------------- issue 19: loses nothing


def _stored(builder, split="train"):
  """stem -> (image, label [H, W]) as training reads them."""
  return {s: (np.asarray(e["image"]), np.asarray(e["label"])[..., 0])
          for s, e in _by_stem(builder, split).items()}


def test_exif_orientation_of_images_and_masks(tmp_path):
  from tests.test_png import NUMPY_ORIENT, save_oriented
  rng = np.random.default_rng(0)
  root = tmp_path / "src"
  want = {}
  for o in range(2, 9):
    raw = rng.integers(0, 256, (6, 10, 3), np.uint8)  # not square
    ids = rng.integers(0, 4, (6, 10), np.uint8)
    # PNG image and mask, both tagged: stored upright, still aligned.
    save_oriented(root / "images" / f"p{o}.png", raw, o)
    save_oriented(root / "masks" / f"p{o}.png", ids, o)
    want[f"p{o}"] = (NUMPY_ORIENT[o](raw), NUMPY_ORIENT[o](ids))
    # A phone JPEG, its mask drawn on the upright photo (untagged, of the
    # oriented size): prepares, no "re-export the mask".
    jpg = save_oriented(root / "images" / f"j{o}.jpg", raw, o, quality=95)
    up = NUMPY_ORIENT[o](ids)
    _save(root / "masks" / f"j{o}.png", np.ascontiguousarray(up))
    want[f"j{o}"] = (NUMPY_ORIENT[o](_pil(jpg)), up)
  got = _stored(_prepare(_params(root), tmp_path / "data"))
  assert sorted(got) == sorted(want)
  for stem, (image, label) in want.items():
    np.testing.assert_array_equal(got[stem][0], image, err_msg=stem)
    np.testing.assert_array_equal(got[stem][1], label, err_msg=stem)


def test_predict_reads_what_training_stores(tmp_path):
  from segjax import predict
  from tests.test_png import save_oriented
  rng = np.random.default_rng(1)
  rgba = rng.integers(0, 256, (6, 8, 4), np.uint8)
  rgb, gray = rgba[..., :3], rgba[..., 0]
  pal = Image.fromarray(rng.integers(0, 8, (6, 8), np.uint8), "L").convert("P")
  pal.putpalette([v for i in range(256) for v in (i * 30 % 256, i, 255 - i)])
  files = {  # stem -> (writer, reference pixels for 3 and for 1 channel)
      "cmyk": (lambda p: Image.fromarray(rgb).convert("CMYK").save(p),
               ".jpg", lambda p: np.asarray(Image.open(p).convert("RGB"))),
      "rgba": (lambda p: Image.fromarray(rgba).save(p), ".png",
               lambda p: rgb),
      "la": (lambda p: Image.fromarray(rgba[..., :2].copy(), "LA").save(p),
             ".png", lambda p: np.repeat(gray[..., None], 3, -1)),
      "pal": (lambda p: pal.save(p, transparency=2), ".png",
              lambda p: np.asarray(pal.convert("RGB"))),
      "gray": (lambda p: Image.fromarray(gray).save(p), ".png",
               lambda p: np.repeat(gray[..., None], 3, -1)),
      "rot": (lambda p: save_oriented(p, rgb, 6), ".jpg",
              lambda p: np.rot90(_pil(p), -1)),
  }
  for channels in (3, 1):
    root = tmp_path / f"c{channels}"
    for stem, (write, ext, ref) in files.items():
      (root / "images").mkdir(parents=True, exist_ok=True)
      write(root / "images" / f"{stem}{ext}")
      shape = (8, 6) if stem == "rot" else (6, 8)
      _save(root / "masks" / f"{stem}.png", np.zeros(shape, np.uint8))
    got = _stored(_prepare(_params(root, num_channels=channels),
                           tmp_path / "data"))
    for stem, (_, ext, ref) in files.items():
      path = root / "images" / f"{stem}{ext}"
      want = ref(path)
      if channels == 1:  # PIL's ITU-R 601-2 luma of the RGB reference
        want = np.asarray(Image.fromarray(np.ascontiguousarray(want)
                                          ).convert("L"))[..., None]
      np.testing.assert_array_equal(got[stem][0], want, err_msg=stem)
      np.testing.assert_array_equal(predict.read_image(path, channels),
                                    want, err_msg=stem)


def test_binary_0_255_masks_need_label_map(tmp_path):
  rng = np.random.default_rng(2)
  root = tmp_path / "src"
  raw = {}
  for stem in ("s0", "s1", "s2"):
    raw[stem] = rng.choice(np.array([0, 255], np.uint8), (6, 8))
    _save(root / "images" / f"{stem}.png",
          rng.integers(0, 256, (6, 8, 3), np.uint8))
    _save(root / "masks" / f"{stem}.png", raw[stem])
  params = _params(root, class_names=("bg", "fg"),
                   split_fractions=(("train", 0.67), ("val", 0.33)))
  data_dir = tmp_path / "data"
  _raises(params, r"every mask in .*masks holds only the values 0 and 255.*"
          r"class 'fg' \(id 1\) would have no pixel.*"
          r"--config\.dataset\.folder\.label_map=\"\(\(255, 1\),\)\".*"
          r"really means unlabelled.*label_map=\"\(\(255, 255\),\)\"",
          data_dir=data_dir)
  mapped = dataclasses.replace(params, label_map=((255, 1),))
  assert (folder.make_builder(mapped).builder_config.name
          != folder.make_builder(params).builder_config.name)
  builder = _prepare(mapped, data_dir)
  got = {**_stored(builder, "train"), **_stored(builder, "val")}
  for stem, ids in raw.items():
    np.testing.assert_array_equal(got[stem][1], (ids == 255).astype(np.uint8))
  builder = _prepare(dataclasses.replace(params, label_map={255: 255}),
                     data_dir)  # a dict works too
  got = {**_stored(builder, "train"), **_stored(builder, "val")}
  for stem, ids in raw.items():  # 255 stays "not labelled"
    np.testing.assert_array_equal(got[stem][1], ids)
  # One pixel of 1 anywhere: the masks are id maps, nothing to ask.
  ids = raw["s1"].copy()
  ids[0, 0] = 1
  _save(root / "masks" / "s1.png", ids)
  _prepare(params, data_dir)
  with pytest.raises(ValueError, match=r"label_map=\(\(255, 1\),\): "
                     r"maps index-mask values"):
    folder.check_params(dataclasses.replace(
        mapped, mask_format="rgb", palette=((0, 0, 0), (1, 1, 1))))
  with pytest.raises(ValueError, match=r"label_map=\(\(255, 2\),\): give "
                     r"distinct .*class id 0\.\.1"):
    folder.check_params(dataclasses.replace(params, label_map=((255, 2),)))
  assert folder.config_block().label_map == ()


def test_every_bad_file_is_named_in_one_error(tmp_path):
  root = _simple(tmp_path / "src", stems=("s0", "s1", "s2", "s3", "s4"))
  for split, stems in (("train", "s0 s1"), ("val", "s2 s3"), ("test", "s4")):
    (root / f"{split}.txt").write_text(stems.replace(" ", "\n"))
  good = (root / "images" / "s0.png").read_bytes()
  (root / "images" / "s0.png").write_bytes(good[:len(good) // 2])  # train
  _save(root / "masks" / "s3.png", np.zeros((6, 9), np.uint8))  # val
  _save(root / "masks" / "s4.png", np.full((6, 8), 9, np.uint8))  # test
  params = _params(root, split_fractions=(), split_files=tuple(
      (s, root / f"{s}.txt") for s in ("train", "val", "test")))
  data_dir = tmp_path / "data"
  with pytest.raises(ValueError) as info:
    _prepare(params, data_dir)
  message = str(info.value)
  assert message.startswith("Folder dataset: 3 problems, nothing was "
                            "prepared")
  for pattern in (r"images/s0\.png is truncated", r"masks/s3\.png is 6x9",
                  r"masks/s4\.png holds id 9"):
    assert len(__import__("re").findall(pattern, message)) == 1, pattern
  assert not folder.make_builder(params, data_dir=data_dir).is_prepared()
  assert not list(data_dir.glob("segjax_folder/*/*"))  # no half copy left
  (root / "images" / "s0.png").write_bytes(good)
  _save(root / "masks" / "s3.png", np.zeros((6, 8), np.uint8))
  _save(root / "masks" / "s4.png", np.zeros((6, 8), np.uint8))
  builder = _prepare(params, data_dir)
  assert [len(builder.as_data_source(s)) for s in ("train", "val", "test")
          ] == [2, 2, 1]


def test_more_than_max_listed_bad_files(tmp_path):
  stems = [f"s{i:02d}" for i in range(folder.MAX_LISTED + 3)]
  root = _simple(tmp_path / "src", stems=stems)
  for stem in stems:
    _save(root / "masks" / f"{stem}.png", np.full((6, 8), 7, np.uint8))
  with pytest.raises(ValueError, match=rf"{len(stems)} problems(.|\n)*"
                     rf"  {folder.MAX_LISTED}\. (.|\n)*\.\.\. and 3 more$"):
    _prepare(_params(root), tmp_path / "data")


def test_dangling_symlink_is_named_with_its_target(tmp_path):
  # A dangling symbolic link is not "a missing image".
  root = _simple(tmp_path / "link")
  (root / "images" / "s1.png").unlink()
  (root / "images" / "s1.png").symlink_to(tmp_path / "gone" / "s1.png")
  _raises(_params(root), r"1 image is a symbolic link to a target that does "
          r"not exist: .*images/s1\.png -> .*gone/s1\.png: restore")


def test_index_mask_format_is_its_content_not_its_name(tmp_path):
  root = _simple(tmp_path / "names")
  (root / "masks" / "s1.png").rename(root / "masks" / "s1.jpg")
  want = _pil(root / "masks" / "s1.jpg")
  got = _stored(_prepare(_params(root), tmp_path / "data"))
  np.testing.assert_array_equal(got["s1"][1], want)
  Image.fromarray(want).save(root / "masks" / "s1.jpg", format="JPEG")
  _raises(_params(root), r"index mask .*masks/s1\.jpg is a JPEG")


def test_split_file_with_a_utf8_bom(tmp_path):
  # A UTF-8 BOM (Windows Notepad) before the first stem.
  root = _simple(tmp_path / "bom")
  (root / "train.txt").write_bytes("\ufeffs0\ns2\n".encode())
  params = _params(root, split_fractions=(),
                   split_files=(("train", root / "train.txt"),))
  assert folder.assign_splits(params, ["s0", "s1", "s2"]) == {
      "train": ["s0", "s2"]}


def test_max_image_pixels_from_the_config(tmp_path):
  from segjax import config as config_lib
  from segjax.data import datasets
  root = _simple(tmp_path / "src", shape=(40, 50))
  cfg = config_lib.default_config().dataset
  cfg.name = "folder"
  cfg.data_dir = str(tmp_path / "data")
  cfg.folder.images_dir = str(root / "images")
  cfg.folder.masks_dir = str(root / "masks")
  cfg.folder.class_names = ("a", "b", "c", "d")
  cfg.folder.split_fractions = (("train", 1.0),)
  cfg.max_image_pixels = 900
  with pytest.raises(ValueError, match=r"images/s0\.png is 50x40 = 2000 "
                     r"pixels, above the limit of 900.*"
                     r"--config\.dataset\.max_image_pixels=N"):
    datasets.data_source(cfg, "train")
  cfg.max_image_pixels = 1000
  assert len(datasets.data_source(cfg, "train")) == 3


def test_read_mask_works_in_the_masks_dtype(tmp_path):
  import tracemalloc
  ids = np.random.default_rng(3).integers(0, 4, (2000, 2000), np.uint8)
  ids[:10] = 255
  path = _save(tmp_path / "m.png", ids)
  tracemalloc.start()
  got = folder.read_mask(path, _params(tmp_path))
  peak = tracemalloc.get_traced_memory()[1]
  tracemalloc.stop()
  np.testing.assert_array_equal(got, ids)
  # The decoded mask (4 MB) and the stored ids (4 MB), plus block-sized
  # temporaries; an int64 copy of the mask alone would be 32 MB.
  assert peak < 4 * ids.nbytes, peak
