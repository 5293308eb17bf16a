"""Tests for segjax.data.folder.files: pairing images and masks by stem, and the splits (files or seeded fractions).
"""

import dataclasses

import numpy as np
from PIL import Image

from segjax.data import folder
from tests.data.folder.common import (by_stem, folder_params, pil_array, prepare, raises_on_prepare, save,
                                      stored_arrays, write_simple)


def test_split_files(tmp_path):
  root = write_simple(tmp_path / "src", stems=[f"s{i}" for i in range(6)])
  (tmp_path / "train.txt").write_text("# training files\ns3\n\ns0  # ok\ns5\n")
  (tmp_path / "val.txt").write_text("s1\ns2\n")
  params = folder_params(root, split_files={"train": tmp_path / "train.txt",
                                            "validation": tmp_path / "val.txt"})
  assert folder.spec_fields(params)[4] == ("train", "validation")
  builder = prepare(params, tmp_path / "data")
  assert set(builder.info.splits) == {"train", "validation"}
  train = builder.as_data_source("train")
  # File order, and s4 (unlisted) is unused.
  assert [train[i]["filename"].decode() for i in range(3)] == ["s3", "s0",
                                                               "s5"]
  assert sorted(by_stem(builder, "validation")) == ["s1", "s2"]


def test_seeded_split_is_deterministic_disjoint_covering(tmp_path):
  stems = [f"img_{i:02d}" for i in range(23)]
  fractions = (("train", 0.5), ("validation", 0.3), ("test", 0.2))
  params = folder_params(tmp_path, split_fractions=fractions, split_seed=4)
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
    root = write_simple(tmp_path / f"src{k}", stems=order)
    params = folder_params(root, split_fractions=(("train", 0.7),
                                                  ("validation", 0.3)))
    builder = prepare(params, tmp_path / "data")
    got.append({s: sorted(by_stem(builder, s)) for s in builder.info.splits})
  assert got[0] == got[1]
  assert len(got[0]["train"]) == 7 and len(got[0]["validation"]) == 3


def test_pairing_errors(tmp_path):
  root = tmp_path / "empty"
  (root / "images").mkdir(parents=True)
  (root / "masks").mkdir()
  raises_on_prepare(folder_params(root), r"empty/images holds no images.*images_dir")

  root = write_simple(tmp_path / "no_mask")
  (root / "masks" / "s1.png").unlink()
  raises_on_prepare(folder_params(root), r"no_mask/images/s1\.png has no mask in .*masks.*"
                    r"add .*masks/s1\.<ext>")

  root = write_simple(tmp_path / "no_image")
  save(root / "masks" / "extra.png", np.zeros((6, 8), np.uint8))
  raises_on_prepare(folder_params(root), r"masks/extra\.png has no image in .*add .*"
                    r"images/extra\.<ext>")

  root = write_simple(tmp_path / "dup")
  save(root / "images" / "s1.JPG", np.zeros((6, 8, 3), np.uint8))
  raises_on_prepare(folder_params(root), r"images/s1\.JPG and .*images/s1\.png|"
                    r"images/s1\.png and .*images/s1\.JPG")

  root = write_simple(tmp_path / "jpeg_mask")
  (root / "masks" / "s0.png").unlink()
  save(root / "masks" / "s0.jpg", np.zeros((6, 8), np.uint8))
  raises_on_prepare(folder_params(root), r"masks/s0\.jpg is a JPEG.*PNG")

  root = write_simple(tmp_path / "no_valid")
  save(root / "valid" / "s0.png", np.ones((6, 8), np.uint8))
  raises_on_prepare(folder_params(root, validity_dir=root / "valid"),
                    r"images/s1\.png has no validity mask")


def test_split_errors(tmp_path):
  root = write_simple(tmp_path / "src")
  a, b = tmp_path / "a.txt", tmp_path / "b.txt"
  a.write_text("s0\n\ns9\n")
  b.write_text("s1\n")
  splits = (("train", str(a)), ("validation", str(b)))
  raises_on_prepare(folder_params(root, split_files=splits),
                    r"a\.txt, line 3: 's9' is not the stem")
  a.write_text("s0\ns1\n")
  raises_on_prepare(folder_params(root, split_files=splits),
                    r"'s1' is in split 'train' and in split 'validation'.*b\.txt")
  a.write_text("s0\ns0\n")
  raises_on_prepare(folder_params(root, split_files=splits), r"a\.txt, line 2: 's0' is "
                    r"listed twice")
  raises_on_prepare(folder_params(root, split_fractions=(("train", 0.9), ("validation", 0.1))),
                    r"split 'validation' gets no files .*split_fractions")


def test_dangling_symlink_is_named_with_its_target(tmp_path):
  # A dangling symbolic link is not "a missing image".
  root = write_simple(tmp_path / "link")
  (root / "images" / "s1.png").unlink()
  (root / "images" / "s1.png").symlink_to(tmp_path / "gone" / "s1.png")
  raises_on_prepare(folder_params(root), r"1 image is a symbolic link to a target that does "
                    r"not exist: .*images/s1\.png -> .*gone/s1\.png: restore")


def test_index_mask_format_is_its_content_not_its_name(tmp_path):
  root = write_simple(tmp_path / "names")
  (root / "masks" / "s1.png").rename(root / "masks" / "s1.jpg")
  want = pil_array(root / "masks" / "s1.jpg")
  got = stored_arrays(prepare(folder_params(root), tmp_path / "data"))
  np.testing.assert_array_equal(got["s1"][1], want)
  Image.fromarray(want).save(root / "masks" / "s1.jpg", format="JPEG")
  raises_on_prepare(folder_params(root), r"index mask .*masks/s1\.jpg is a JPEG")


def test_split_file_with_a_utf8_bom(tmp_path):
  # A UTF-8 BOM (Windows Notepad) before the first stem.
  root = write_simple(tmp_path / "bom")
  (root / "train.txt").write_bytes("\ufeffs0\ns2\n".encode())
  params = folder_params(root, split_fractions=(),
                         split_files=(("train", root / "train.txt"),))
  assert folder.assign_splits(params, ["s0", "s1", "s2"]) == {
      "train": ["s0", "s2"]}
