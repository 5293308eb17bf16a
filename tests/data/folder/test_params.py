"""Tests for segjax.data.folder.params: the checks naming the config key, the config block, the registry's fields."""

import dataclasses

import pytest

from segjax.data import folder
from tests.data.folder.common import PALETTE, folder_params, write_simple


@pytest.mark.parametrize("change, match", [
    (dict(images_dir="nowhere"), r"folder\.images_dir='nowhere': no such"),
    (dict(validity_dir="nowhere"), r"folder\.validity_dir='nowhere'"),
    (dict(class_names=[str(i) for i in range(256)]),
     r"folder\.class_names=.*1 to 255 distinct"),
    (dict(class_names=("a", "a")), r"folder\.class_names"),
    (dict(palette=((1, 2, 3),)), r"folder\.palette=.*one \(R, G, B\)"),
    (dict(mask_format="rgb"), r"folder\.palette=None: rgb masks"),
    (dict(mask_format="rgb", palette=((1, 2, 3),) * 4), r"distinct colours"),
    (dict(mask_format="rgb", palette=PALETTE + ((9, 9, 9),),
          ignore_color=(9, 9, 9)), r"folder\.ignore_color=.*not a palette"),
    (dict(mask_format="rgb", palette=PALETTE + ((9, 9, 9),),
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
  params = dataclasses.replace(folder_params(write_simple(tmp_path)), **change)
  with pytest.raises(ValueError, match=match):
    folder.check_params(params)
  with pytest.raises(ValueError, match=match):
    folder.make_builder(params, data_dir=tmp_path / "data")


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
