"""Tests for segjax.data.folder.read's masks: index masks (8/16-bit, label_map, reduce_zero_label), colour-coded
masks, validity masks, as stored class ids.

Every dataset is written here with PIL into tmp_path; decoded labels are compared with the ids written, and
colour-coded masks with a per-pixel brute-force reference.
"""

import dataclasses
import math

import numpy as np
import pytest

from segjax.data import folder
from tests.data.folder.common import (PALETTE, by_stem, folder_params, pil_array, prepare, raises_on_prepare, save,
                                      stored_arrays, write_simple)


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
    save(root / "images" / image_name, image)
    ids = rng.integers(0, 4, shape[:2], np.uint8)
    ids[0, :3] = 255  # Ignore index: stays 255.
    save(root / "masks" / mask_name, ids, mode=mode)
    written[stem] = (root / "images" / image_name, ids)
  (root / "images" / "notes.txt").write_text("not an image")
  (root / "images" / ".hidden.png").write_bytes(b"")

  builder = prepare(folder_params(root), tmp_path / "data")
  got = by_stem(builder, "train")
  assert sorted(got) == sorted(cases)
  for stem, (image_path, ids) in written.items():
    np.testing.assert_array_equal(got[stem]["image"],
                                  pil_array(image_path, "RGB"))
    np.testing.assert_array_equal(got[stem]["label"][..., 0], ids)
    assert got[stem]["label"].dtype == np.uint8

  gray = prepare(folder_params(root, num_channels=1), tmp_path / "data")
  assert gray.builder_config.name != builder.builder_config.name
  got = by_stem(gray, "train")
  for stem, (image_path, ids) in written.items():
    assert got[stem]["image"].shape == ids.shape + (1,)
    np.testing.assert_array_equal(got[stem]["image"][..., 0],
                                  pil_array(image_path, "L"))
    np.testing.assert_array_equal(got[stem]["label"][..., 0], ids)


def test_16bit_index_masks_and_ignore_index(tmp_path):
  root = tmp_path / "src"
  save(root / "images" / "x.png", np.zeros((5, 6, 3), np.uint8))
  ids = np.arange(30, dtype=np.uint16).reshape(5, 6) % 4
  ids[2, 2:5] = 1000
  save(root / "masks" / "x.png", ids, mode="I;16")
  params = folder_params(root, ignore_index=1000)
  got = by_stem(prepare(params, tmp_path / "data"), "train")["x"]
  np.testing.assert_array_equal(got["label"][..., 0],
                                np.where(ids == 1000, 255, ids))


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
  red, blue = np.array(PALETTE[0]), np.array(PALETTE[1])
  mask = np.zeros((8, 10, 3), np.uint8)
  mask[:, :4] = red
  mask[:, 6:] = blue
  mask[:, 4] = (red + blue) // 2  # Exact midpoint: a tie, goes to class 0.
  mask[:, 5] = (red + 3 * blue) // 4  # Nearer blue, within tolerance.
  mask[0, 0] = (255, 255, 255)  # Far from every colour.
  mask[1, 0] = (5, 5, 5)  # Near the void colour.
  mask[2, 0] = red + (3, -2, 4)  # JPEG-like noise.
  mask[3, 0] = PALETTE[2]
  root = tmp_path / "src"
  save(root / "images" / "edge.png", np.zeros((8, 10, 3), np.uint8))
  save(root / "masks" / "edge.png", mask)
  # A noisy mask, stored as JPEG (allowed for rgb masks).
  rng = np.random.default_rng(1)
  noisy = np.asarray(PALETTE + (_VOID,))[rng.integers(0, 4, (12, 14))]
  noisy = noisy + rng.normal(0, 40, noisy.shape)
  far = rng.random((12, 14)) < 0.2
  noisy[far] = rng.integers(0, 256, (far.sum(), 3))
  save(root / "images" / "noisy.jpg", np.zeros((12, 14, 3), np.uint8))
  save(root / "masks" / "noisy.jpg", np.clip(noisy, 0, 255).astype(np.uint8))

  # Pixels beyond tolerance (white, far JPEG noise) are left unlabelled.
  params = folder_params(root, class_names=("red", "blue", "green"),
                         mask_format="rgb", palette=PALETTE, ignore_color=_VOID,
                         palette_tolerance=_TOL, off_palette="ignore")
  got = by_stem(prepare(params, tmp_path / "data"), "train")
  labels = got["edge"]["label"][..., 0]
  want = _brute_force(mask, PALETTE, _TOL, _VOID)
  np.testing.assert_array_equal(labels, want)
  # The reference agrees with what the mask was drawn to mean.
  assert (labels[4:, :5] == 0).all() and (labels[:, 5:] == 1).all()
  assert labels[0, 0] == 255 and labels[1, 0] == 255
  assert labels[2, 0] == 0 and labels[3, 0] == 2
  decoded = pil_array(root / "masks" / "noisy.jpg", "RGB")
  want = _brute_force(decoded, PALETTE, _TOL, _VOID)
  np.testing.assert_array_equal(got["noisy"]["label"][..., 0], want)
  assert 0 < (want == 255).sum() < want.size  # Both outcomes occur.


def test_off_palette_colours_are_an_error_by_default(tmp_path):
  red = np.array(PALETTE[0])
  mask = np.zeros((6, 8, 3), np.uint8)
  mask[:] = red
  mask[0, :5] = (255, 255, 255)  # 5 px, 322.9 from red (nearest).
  mask[1, :2] = (128, 0, 0)  # 2 px, 83.6 from red.
  mask[2, 0] = red + (0, 0, 40)  # 1 px, 40.0 from red.
  mask[3, 0] = (10, 10, 10)  # Within 30 of void: not an error.
  mask[4, 0] = red + (10, -10, 10)  # Within 30 of red: not an error.
  root = tmp_path / "src"
  save(root / "images" / "m.png", np.zeros((6, 8, 3), np.uint8))
  save(root / "masks" / "m.png", mask)
  save(root / "images" / "n.png", np.zeros((6, 8, 3), np.uint8))
  save(root / "masks" / "n.png",
       np.broadcast_to(red, (6, 8, 3)).astype(np.uint8))
  params = folder_params(root, class_names=("red", "blue", "green"),
                         mask_format="rgb", palette=PALETTE, ignore_color=_VOID)
  assert params.off_palette == "error" and params.palette_tolerance == 30
  with pytest.raises(ValueError) as info:
    prepare(params, tmp_path / "data")
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
  save(root / "masks" / "m.png", mask)
  with pytest.raises(ValueError, match=r"\(0, 0, 90\) x 1 px, nearest "
                     r"\(0, 0, 0\) \(ignore_color\) at distance 90\.0"):
    prepare(params, tmp_path / "data")
  # "ignore" leaves the same pixels unlabelled, as the brute force does.
  mask[1, 1] = (255, 255, 255)
  save(root / "masks" / "m.png", mask)
  ignoring = dataclasses.replace(params, off_palette="ignore")
  got = by_stem(prepare(ignoring, tmp_path / "data"), "train")
  want = _brute_force(mask, PALETTE, 30.0, _VOID)
  np.testing.assert_array_equal(got["m"]["label"][..., 0], want)
  assert want[0, 0] == want[1, 1] == 255 and (want[2:] == 0).all()


def test_rgb_to_ids_matches_brute_force_random(tmp_path):
  del tmp_path
  rng = np.random.default_rng(2)
  rgb = rng.integers(0, 256, (20, 30, 3), np.uint8)
  rgb[::3] = np.asarray(PALETTE)[rng.integers(0, 3, 30)]
  for tolerance in (0.0, 60.0, 1000.0):
    for void in (None, _VOID):
      got = folder.rgb_to_ids(rgb, PALETTE, tolerance, void)
      want = _brute_force(rgb, PALETTE, tolerance,
                          void if void else (-10**6,) * 3)
      np.testing.assert_array_equal(got, want)


def test_validity_mask(tmp_path):
  root = write_simple(tmp_path / "src", stems=("p", "q"), shape=(6, 8))
  rng = np.random.default_rng(3)
  valid_p = rng.random((6, 8)) < 0.6
  valid_q = (rng.random((6, 8)) < 0.6).astype(np.uint8) * 7
  save(root / "valid" / "p.png", valid_p)  # Mode "1".
  save(root / "valid" / "q.bmp", valid_q)
  params = folder_params(root, validity_dir=root / "valid")
  got = by_stem(prepare(params, tmp_path / "data"), "train")
  for stem, valid in (("p", valid_p), ("q", valid_q != 0)):
    ids = pil_array(root / "masks" / f"{stem}.png")
    np.testing.assert_array_equal(got[stem]["label"][..., 0],
                                  np.where(valid, ids, 255))


def test_binary_0_255_masks_need_label_map(tmp_path):
  rng = np.random.default_rng(2)
  root = tmp_path / "src"
  raw = {}
  for stem in ("s0", "s1", "s2"):
    raw[stem] = rng.choice(np.array([0, 255], np.uint8), (6, 8))
    save(root / "images" / f"{stem}.png",
         rng.integers(0, 256, (6, 8, 3), np.uint8))
    save(root / "masks" / f"{stem}.png", raw[stem])
  params = folder_params(root, class_names=("bg", "fg"),
                         split_fractions=(("train", 0.67), ("val", 0.33)))
  data_dir = tmp_path / "data"
  raises_on_prepare(params, r"every mask in .*masks holds only the values 0 and 255.*"
                    r"class 'fg' \(id 1\) would have no pixel.*"
                    r"--config\.dataset\.folder\.label_map=\"\(\(255, 1\),\)\".*"
                    r"really means unlabelled.*label_map=\"\(\(255, 255\),\)\"",
                    data_dir=data_dir)
  mapped = dataclasses.replace(params, label_map=((255, 1),))
  assert (folder.make_builder(mapped).builder_config.name
          != folder.make_builder(params).builder_config.name)
  builder = prepare(mapped, data_dir)
  got = {**stored_arrays(builder, "train"), **stored_arrays(builder, "val")}
  for stem, ids in raw.items():
    np.testing.assert_array_equal(got[stem][1], (ids == 255).astype(np.uint8))
  builder = prepare(dataclasses.replace(params, label_map={255: 255}),
                    data_dir)  # a dict works too
  got = {**stored_arrays(builder, "train"), **stored_arrays(builder, "val")}
  for stem, ids in raw.items():  # 255 stays "not labelled"
    np.testing.assert_array_equal(got[stem][1], ids)
  # One pixel of 1 anywhere: the masks are id maps, nothing to ask.
  ids = raw["s1"].copy()
  ids[0, 0] = 1
  save(root / "masks" / "s1.png", ids)
  prepare(params, data_dir)
  with pytest.raises(ValueError, match=r"label_map=\(\(255, 1\),\): "
                     r"maps index-mask values"):
    folder.check_params(dataclasses.replace(
        mapped, mask_format="rgb", palette=((0, 0, 0), (1, 1, 1))))
  with pytest.raises(ValueError, match=r"label_map=\(\(255, 2\),\): give "
                     r"distinct .*class id 0\.\.1"):
    folder.check_params(dataclasses.replace(params, label_map=((255, 2),)))
  assert folder.config_block().label_map == ()


def _mmseg_reduce_zero_label(gt: np.ndarray) -> np.ndarray:
  """MMSegmentation's LoadAnnotations(reduce_zero_label=True), line for line, on a uint8 mask."""
  gt = gt.copy()
  gt[gt == 0] = 255
  gt = gt - 1
  gt[gt == 254] = 255
  return gt


def test_reduce_zero_label_masks_hold_one_more_id_and_reduce_like_mmseg(tmp_path):
  """ADE20K-style masks: 0 is "other", 1..K are the K listed classes. Preparing accepts id K only with
  reduce_zero_label; the pipeline's labels then equal MMSegmentation's transform (0 -> 255, c -> c - 1)."""
  from segjax.data import pipeline  # pylint: disable=import-outside-toplevel

  root = tmp_path / "src"
  rng = np.random.default_rng(3)
  save(root / "images" / "x.png", rng.integers(0, 256, (6, 8, 3), np.uint8))
  raw = rng.integers(0, 5, (6, 8), np.uint8)  # 0..4 for the 4 class names
  raw[0, :3] = 255
  save(root / "masks" / "x.png", raw)
  with pytest.raises(ValueError, match="holds id 4"):
    prepare(folder_params(root), tmp_path / "plain")
  params = dataclasses.replace(folder_params(root), reduce_zero_label=True)
  stored = by_stem(prepare(params, tmp_path / "reduced"), "train")["x"]
  ex = pipeline.to_example(stored, 255, 4, reduce_zero_label=True)
  reference = _mmseg_reduce_zero_label(raw)
  np.testing.assert_array_equal(ex.weight, reference != 255)
  np.testing.assert_array_equal(ex.label[reference != 255], reference[reference != 255])


def test_read_mask_works_in_the_masks_dtype(tmp_path):
  import tracemalloc
  ids = np.random.default_rng(3).integers(0, 4, (2000, 2000), np.uint8)
  ids[:10] = 255
  path = save(tmp_path / "m.png", ids)
  tracemalloc.start()
  got = folder.read_mask(path, folder_params(tmp_path))
  peak = tracemalloc.get_traced_memory()[1]
  tracemalloc.stop()
  np.testing.assert_array_equal(got, ids)
  # The decoded mask (4 MB) and the stored ids (4 MB), plus block-sized
  # temporaries; an int64 copy of the mask alone would be 32 MB.
  assert peak < 4 * ids.nbytes, peak
