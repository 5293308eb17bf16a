"""Tests for segjax.data.folder.read's images: stored as training and predict.py read them, upright by their EXIF
orientation, and files that cannot be read named in the error.

Images are written here with PIL; the stored pixels are compared with PIL's decode of the written files.
"""

import numpy as np
from PIL import Image

from tests.data.folder.common import (folder_params, pil_array, prepare, raises_on_prepare, save, stored_arrays,
                                      write_simple)
from tests.data.test_png import NUMPY_ORIENT, save_oriented


def test_pixel_errors(tmp_path):
  root = write_simple(tmp_path / "bad_id")
  ids = np.zeros((6, 8), np.uint8)
  ids[1, 1] = 7
  save(root / "masks" / "s2.png", ids)
  data_dir = tmp_path / "data"
  raises_on_prepare(folder_params(root), r"masks/s2\.png holds id 7 .*0\.\.3 .*ignore_index",
                    data_dir=data_dir)
  # A failed prepare leaves nothing behind: fixing the mask is enough.
  save(root / "masks" / "s2.png", np.zeros((6, 8), np.uint8))
  assert len(prepare(folder_params(root), data_dir).as_data_source("train")) == 3

  root = write_simple(tmp_path / "size")
  save(root / "masks" / "s1.png", np.zeros((6, 9), np.uint8))
  raises_on_prepare(folder_params(root), r"masks/s1\.png is 6x9 but its image .*"
                    r"images/s1\.png is 6x8")

  root = write_simple(tmp_path / "vsize")
  for stem in ("s0", "s1", "s2"):
    save(root / "valid" / f"{stem}.png", np.ones((5, 8), np.uint8))
  raises_on_prepare(folder_params(root, validity_dir=root / "valid"),
                    r"valid/s0\.png is 5x8 but its image .*images/s0\.png is 6x8")

  root = write_simple(tmp_path / "rgb_index")
  save(root / "masks" / "s0.png", np.zeros((6, 8, 3), np.uint8))
  raises_on_prepare(folder_params(root), r"masks/s0\.png has mode RGB.*mask_format='rgb'")

  root = write_simple(tmp_path / "disguised")  # JPEG bytes behind a .png name.
  Image.fromarray(np.zeros((6, 8), np.uint8)).save(root / "masks" / "s1.png",
                                                   format="JPEG")
  raises_on_prepare(folder_params(root), r"index mask .*masks/s1\.png is a JPEG.*PNG")

  root = write_simple(tmp_path / "wide")
  save(root / "images" / "s0.png", np.zeros((6, 8), np.uint16), mode="I;16")
  raises_on_prepare(folder_params(root), r"images/s0\.png has mode I;16.*8-bit")


def test_exif_orientation_of_images_and_masks(tmp_path):
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
    save(root / "masks" / f"j{o}.png", np.ascontiguousarray(up))
    want[f"j{o}"] = (NUMPY_ORIENT[o](pil_array(jpg)), up)
  got = stored_arrays(prepare(folder_params(root), tmp_path / "data"))
  assert sorted(got) == sorted(want)
  for stem, (image, label) in want.items():
    np.testing.assert_array_equal(got[stem][0], image, err_msg=stem)
    np.testing.assert_array_equal(got[stem][1], label, err_msg=stem)


def test_predict_reads_what_training_stores(tmp_path):
  from segjax.apps import predict  # pylint: disable=import-outside-toplevel
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
              lambda p: np.rot90(pil_array(p), -1)),
  }
  for channels in (3, 1):
    root = tmp_path / f"c{channels}"
    for stem, (write, ext, ref) in files.items():
      (root / "images").mkdir(parents=True, exist_ok=True)
      write(root / "images" / f"{stem}{ext}")
      shape = (8, 6) if stem == "rot" else (6, 8)
      save(root / "masks" / f"{stem}.png", np.zeros(shape, np.uint8))
    got = stored_arrays(prepare(folder_params(root, num_channels=channels),
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
