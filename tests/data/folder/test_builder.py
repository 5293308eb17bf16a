"""Tests for segjax.data.folder.builder: the config name's hash (params and files), every bad file in one error with
nothing left prepared, the config's pixel limit while preparing.
"""

import dataclasses
import os
import pathlib

import numpy as np
import pytest

from segjax.data import folder
from tests.data.folder.common import NO_GCS, PALETTE, by_stem, folder_params, prepare, save, write_simple


def test_config_name_tracks_params_and_files(tmp_path, monkeypatch):
  root = write_simple(tmp_path / "src")
  data_dir = tmp_path / "data"
  params = folder_params(root)

  def name(p, **kw):
    return folder.make_builder(p, data_dir=data_dir, **kw).builder_config.name

  base = name(params)
  assert base.startswith("custom-") and len(base) == len("custom-") + 8
  assert name(params, name="mine") == "mine-" + base[-8:]
  assert name(dataclasses.replace(params)) == base
  # Relative paths mean the same folders.
  monkeypatch.chdir(tmp_path)
  assert name(folder_params(pathlib.Path("src"))) == base
  save(root / "valid" / "s0.png", np.ones((6, 8), np.uint8))
  for stem in ("s1", "s2"):
    save(root / "valid" / f"{stem}.png", np.ones((6, 8), np.uint8))
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
                                    palette=PALETTE + ((9, 9, 9),))
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
  builder = prepare(params, data_dir)
  assert builder.as_data_source("train")[0]["label"].max() <= 3
  ids = np.full((6, 8), 2, np.uint8)
  save(root / "masks" / "s0.png", ids)
  os.utime(root / "masks" / "s0.png", ns=(1, 1))  # Even with an old mtime.
  fresh = folder.make_builder(params, data_dir=data_dir)
  assert fresh.builder_config.name != builder.builder_config.name
  assert not fresh.is_prepared()
  fresh.download_and_prepare(download_config=NO_GCS)
  np.testing.assert_array_equal(
      by_stem(fresh, "train")["s0"]["label"][..., 0], ids)
  # The same params again reuse the prepared copy.
  assert folder.make_builder(params, data_dir=data_dir).is_prepared()


def test_every_bad_file_is_named_in_one_error(tmp_path):
  root = write_simple(tmp_path / "src", stems=("s0", "s1", "s2", "s3", "s4"))
  for split, stems in (("train", "s0 s1"), ("val", "s2 s3"), ("test", "s4")):
    (root / f"{split}.txt").write_text(stems.replace(" ", "\n"))
  good = (root / "images" / "s0.png").read_bytes()
  (root / "images" / "s0.png").write_bytes(good[:len(good) // 2])  # train
  save(root / "masks" / "s3.png", np.zeros((6, 9), np.uint8))  # val
  save(root / "masks" / "s4.png", np.full((6, 8), 9, np.uint8))  # test
  params = folder_params(root, split_fractions=(), split_files=tuple(
      (s, root / f"{s}.txt") for s in ("train", "val", "test")))
  data_dir = tmp_path / "data"
  with pytest.raises(ValueError) as info:
    prepare(params, data_dir)
  message = str(info.value)
  assert message.startswith("Folder dataset: 3 problems, nothing was "
                            "prepared")
  for pattern in (r"images/s0\.png is truncated", r"masks/s3\.png is 6x9",
                  r"masks/s4\.png holds id 9"):
    assert len(__import__("re").findall(pattern, message)) == 1, pattern
  assert not folder.make_builder(params, data_dir=data_dir).is_prepared()
  assert not list(data_dir.glob("segjax_folder/*/*"))  # no half copy left
  (root / "images" / "s0.png").write_bytes(good)
  save(root / "masks" / "s3.png", np.zeros((6, 8), np.uint8))
  save(root / "masks" / "s4.png", np.zeros((6, 8), np.uint8))
  builder = prepare(params, data_dir)
  assert [len(builder.as_data_source(s)) for s in ("train", "val", "test")
          ] == [2, 2, 1]


def test_more_than_max_listed_bad_files(tmp_path):
  stems = [f"s{i:02d}" for i in range(folder.MAX_LISTED + 3)]
  root = write_simple(tmp_path / "src", stems=stems)
  for stem in stems:
    save(root / "masks" / f"{stem}.png", np.full((6, 8), 7, np.uint8))
  with pytest.raises(ValueError, match=rf"{len(stems)} problems(.|\n)*"
                     rf"  {folder.MAX_LISTED}\. (.|\n)*\.\.\. and 3 more$"):
    prepare(folder_params(root), tmp_path / "data")


def test_max_image_pixels_from_the_config(tmp_path):
  from segjax import config as config_lib
  from segjax.data import datasets
  root = write_simple(tmp_path / "src", shape=(40, 50))
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
