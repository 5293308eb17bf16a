"""The bad-input catalogue (issue 5): each bad input through the entry point a user reaches it by, the message it
gives (the file or key, the value, the fix), and an existing checkpoint that stays bitwise intact and restorable.

A module fixture trains a tiny run for 2 steps; every case then resumes training on it (`loop.train_and_evaluate`),
evaluates it (`eval_app.run_eval`), or runs train.py on it, and compares the sha256 of every checkpoint file
afterwards. Bad folder datasets carry the shapes dataset's 6 class names and 3 channels, so the checkpoint is
compatible and the error really comes from the data.
"""

import pathlib
import re
import shutil

import jax
import numpy as np
from PIL import Image
from PIL import ImageFile
import pytest

from segjax.apps import eval as eval_app
from segjax.data import pipeline
from segjax.data import shapes
from segjax.training import loop
from tests.bad_input_run import STEP, Run, _assert_intact, _config, run  # noqa: F401  (run: the module fixture)

# ----------------------------------------------------------------- bad folders


def _png(path: pathlib.Path, array) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.asarray(array, np.uint8)).save(path)
  return path


def _truncate(path: pathlib.Path) -> None:
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])


def _folder(root: pathlib.Path, *, rgb: bool = False, channels: int = 3, n: int = 5) -> pathlib.Path:
  """n pairs s0.. of 16x16 random images and masks of the 6 shapes classes (ids, or shapes.PALETTE colours)."""
  rng = np.random.default_rng(0)
  for i in range(n):
    _png(root / "images" / f"s{i}.png", rng.integers(0, 256, (16, 16, 3) if channels == 3 else (16, 16)))
    ids = rng.integers(0, len(shapes.CLASS_NAMES), (16, 16))
    _png(root / "masks" / f"s{i}.png", np.asarray(shapes.PALETTE)[ids] if rgb else ids)
  return root


def _folder_config(run: Run, tmp_path: pathlib.Path, root: pathlib.Path, **folder):
  return _config(run.data_dir, num_train_steps=2 * STEP, **{
      "dataset.name": "folder", "dataset.data_dir": str(tmp_path / "tfds"),
      "dataset.folder.images_dir": str(root / "images"), "dataset.folder.masks_dir": str(root / "masks"),
      "dataset.folder.class_names": shapes.CLASS_NAMES, "dataset.folder.split_fractions": (("train", 1.0),),
      **{f"dataset.folder.{k}": v for k, v in folder.items()}})


def _train_on(run, tmp_path, root, **folder):
  config = _folder_config(run, tmp_path, root, **folder)
  return lambda: loop.train_and_evaluate(config, run.workdir, progress=False, devices=jax.devices()[:1])


# Each case: (run, tmp_path) -> (call, exception type, regexes the message must match).


def truncated_png_image(run, tmp_path):
  root = _folder(tmp_path / "d")
  _truncate(root / "images" / "s2.png")
  return _train_on(run, tmp_path, root), ValueError, [
      r"image .*/d/images/s2\.png is truncated", r"re-export it, or remove the pair with stem 's2'"]


def truncated_png_image_with_pil_lenient(run, tmp_path):
  # Another library may have set LOAD_TRUNCATED_IMAGES (tfds does for thumbnails): still an error, not grey pixels.
  ImageFile.LOAD_TRUNCATED_IMAGES = True  # the test restores it
  call, exc, patterns = truncated_png_image(run, tmp_path)
  return call, exc, patterns


def truncated_jpeg_image(run, tmp_path):
  root = _folder(tmp_path / "d")
  (root / "images" / "s1.png").unlink()
  # Large enough that the cut falls in the pixel data: PIL opens it, and fails only when decoding.
  _png(root / "masks" / "s1.png", np.zeros((64, 64), np.uint8))
  Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), np.uint8)).save(root / "images" / "s1.jpg")
  _truncate(root / "images" / "s1.jpg")
  return _train_on(run, tmp_path, root), ValueError, [
      r"image .*/d/images/s1\.jpg is truncated: PIL reads its JPEG header \(64x64\) but not its pixels",
      r"re-export it"]


def truncated_image_header(run, tmp_path):
  root = _folder(tmp_path / "d")
  (root / "images" / "s1.png").unlink()
  (root / "images" / "s1.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00")  # a JPEG cut inside its header
  return _train_on(run, tmp_path, root), ValueError, [
      r"image .*/d/images/s1\.jpg \(11 bytes\) is truncated: PIL cannot read its header", r"re-export it"]


def not_an_image(run, tmp_path):
  root = _folder(tmp_path / "d")
  (root / "images" / "s3.png").write_text("a text file with an image's name\n")
  return _train_on(run, tmp_path, root), ValueError, [
      r"image .*/d/images/s3\.png \(33 bytes\) is not an image PIL can read", r"re-export it, or remove"]


def truncated_mask(run, tmp_path):
  root = _folder(tmp_path / "d")
  _truncate(root / "masks" / "s0.png")
  return _train_on(run, tmp_path, root), ValueError, [r"mask .*/d/masks/s0\.png is truncated", r"re-export it"]


def size_mismatch(run, tmp_path):
  root = _folder(tmp_path / "d")
  _png(root / "masks" / "s4.png", np.zeros((16, 15), np.uint8))
  return _train_on(run, tmp_path, root), ValueError, [
      r"/d/masks/s4\.png is 16x15 but its image .*/d/images/s4\.png is 16x16", r"re-export the mask at 16x16"]


def size_mismatch_in_pipeline(run, tmp_path):
  del run, tmp_path
  raw = {"image": np.zeros((16, 16, 3), np.uint8), "label": np.zeros((16, 12, 1), np.uint8), "filename": b"frame7"}
  return lambda: pipeline.to_example(raw, 255, 6), ValueError, [
      r"Example frame7: image is 16x16 but its label is 16x12", r"re-export the mask", r"prepare the dataset afresh"]


def label_id_out_of_range(run, tmp_path):
  root = _folder(tmp_path / "d")
  ids = np.zeros((16, 16), np.uint8)
  ids[3, :4] = 9
  _png(root / "masks" / "s1.png", ids)
  return _train_on(run, tmp_path, root), ValueError, [
      r"mask .*/d/masks/s1\.png holds id 9 \(4 pixels\)", r"ids must be 0\.\.5 \(6 class_names\) or the ignore "
      r"index 255", r"folder\.class_names", r"folder\.ignore_index=9"]


def label_id_out_of_range_in_pipeline(run, tmp_path):
  del run, tmp_path
  label = np.full((8, 8, 1), 255, np.uint8)
  label[0, :3] = 6
  label[1, 0] = 7
  raw = {"image": np.zeros((8, 8, 3), np.uint8), "label": label, "filename": "frame9"}
  return lambda: pipeline.to_example(raw, 255, 6), ValueError, [
      r"Example frame9: label id 7 \(4 pixels with ids >= 6\) is outside 0\.\.5 \(6 classes; the ignore label is "
      r"255\)", r"fix the mask or the dataset's class list"]


def off_palette_colour(run, tmp_path):
  root = _folder(tmp_path / "d", rgb=True)
  mask = np.zeros((16, 16, 3), np.uint8)
  mask[0, :7] = (255, 255, 255)  # nearest palette colour (255, 225, 25), 230 away
  _png(root / "masks" / "s2.png", mask)
  return _train_on(run, tmp_path, root, mask_format="rgb", palette=shapes.PALETTE), ValueError, [
      r"rgb mask .*/d/masks/s2\.png has 7 pixels in 1 colour farther than palette_tolerance=30",
      r"\(255, 255, 255\) x 7 px, nearest \(255, 225, 25\) \(class 'triangle'\) at distance 231\.9",
      r"add the colour to --config\.dataset\.folder\.palette", r"raise --config\.dataset\.folder\.palette_tolerance",
      r"--config\.dataset\.folder\.off_palette='ignore'"]


def empty_images_folder(run, tmp_path):
  root = tmp_path / "d"
  (root / "images").mkdir(parents=True)
  (root / "masks").mkdir()
  return _train_on(run, tmp_path, root), ValueError, [r"images_dir .*/d/images holds no images",
                                                      r"fix --config\.dataset\.folder\.images_dir"]


def empty_split_file(run, tmp_path):
  root = _folder(tmp_path / "d")
  (root / "train.txt").write_text("s0\n")
  (root / "val.txt").write_text("# nothing yet\n\n")
  splits = (("train", str(root / "train.txt")), ("validation", str(root / "val.txt")))
  return _train_on(run, tmp_path, root, split_files=splits), ValueError, [
      r"split file .*/d/val\.txt \('validation'\) lists no stems", r"add some or drop the split"]


def empty_split_fraction(run, tmp_path):
  root = _folder(tmp_path / "d", n=4)
  return _train_on(run, tmp_path, root, split_fractions=(("train", 0.9), ("validation", 0.1))), ValueError, [
      r"split 'validation' gets no files \(0\.1 of 4\)", r"raise its share in --config\.dataset\.folder\."
      r"split_fractions or give --config\.dataset\.folder\.split_files"]


def empty_eval_slice(run, tmp_path):
  del tmp_path
  config = _config(run.data_dir)
  return lambda: eval_app.run_eval(config, str(run.workdir), split="test[:0]"), ValueError, [
      # The tfds slicing hint is also in the message datasets.data_source gives for an empty split.
      r"Split 'test\[:0\]' of dataset 'shapes' holds no examples", r"\(tfds slicing: '"]


def mean_of_wrong_length(run, tmp_path):
  del tmp_path
  config = _config(run.data_dir, num_train_steps=2 * STEP, **{"dataset.mean": (120.0, 110.0)})
  return (lambda: loop.train_and_evaluate(config, run.workdir, progress=False, devices=jax.devices()[:1]),
          ValueError, [r"config\.dataset\.mean=\(120\.0, 110\.0\): give 1 or 3 values for shapes"])


def checkpoint_channels_differ(run, tmp_path):
  root = _folder(tmp_path / "d", channels=1)
  config = _folder_config(run, tmp_path, root, num_channels=1)
  return lambda: eval_app.run_eval(config, str(run.workdir), split="train"), ValueError, [
      rf"Cannot evaluate .*checkpoints at step {STEP}", r"image channels: 3 in the checkpoint, 1 now",
      r"Use the recipe it was trained with"]


def eval_workdir_missing(run, tmp_path):
  config = _config(run.data_dir)
  return lambda: eval_app.run_eval(config, str(tmp_path / "nowhere")), FileNotFoundError, [
      r"--workdir=.*/nowhere does not exist", r"train first with `python train.py --config=\.\.\. --workdir="]


def eval_workdir_is_a_file(run, tmp_path):
  (tmp_path / "notes.txt").write_text("not a run")
  config = _config(run.data_dir)
  return lambda: eval_app.run_eval(config, str(tmp_path / "notes.txt")), FileNotFoundError, [
      r"--workdir=.*/notes\.txt is a file, not a training directory", r"train first"]


def eval_workdir_without_checkpoints(run, tmp_path):
  (tmp_path / "w" / "eval").mkdir(parents=True)
  config = _config(run.data_dir)
  return lambda: eval_app.run_eval(config, str(tmp_path / "w")), FileNotFoundError, [
      r"/w/checkpoints does not exist, so .*/w is no training directory", r"train first"]


def eval_checkpoints_empty(run, tmp_path):
  (tmp_path / "w" / "checkpoints").mkdir(parents=True)
  config = _config(run.data_dir)
  return lambda: eval_app.run_eval(config, str(tmp_path / "w")), FileNotFoundError, [
      r"/w/checkpoints is empty: no checkpoint was saved there yet", r"train first"]


def eval_checkpoint_half_written(run, tmp_path):
  # What orbax leaves when a save is cut short: the step under a temporary name, never renamed.
  shutil.copytree(run.workdir / "checkpoints" / str(STEP), tmp_path / "w" / "checkpoints" / "4.orbax-checkpoint-tmp")
  config = _config(run.data_dir)
  return lambda: eval_app.run_eval(config, str(tmp_path / "w")), FileNotFoundError, [
      r"/w/checkpoints holds no complete checkpoint, only unfinished saves \(4\.orbax-checkpoint-tmp\)",
      r"stopped while saving", r"Rerun the same train\.py command"]


CASES = [truncated_png_image, truncated_png_image_with_pil_lenient, truncated_jpeg_image, truncated_image_header,
         not_an_image, truncated_mask, size_mismatch, size_mismatch_in_pipeline, label_id_out_of_range,
         label_id_out_of_range_in_pipeline, off_palette_colour, empty_images_folder, empty_split_file,
         empty_split_fraction, empty_eval_slice, mean_of_wrong_length, checkpoint_channels_differ,
         eval_workdir_missing, eval_workdir_is_a_file, eval_workdir_without_checkpoints, eval_checkpoints_empty, eval_checkpoint_half_written]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_catalogue(run, tmp_path, case, monkeypatch):
  monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", False)
  call, exc, patterns = case(run, tmp_path)
  with pytest.raises(exc) as info:
    call()
  message = str(info.value)
  for pattern in patterns:
    assert re.search(pattern, message), f"{pattern!r} not in: {message}"
  _assert_intact(run)
  if case is truncated_png_image_with_pil_lenient:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # left as the other library set it


def test_empty_training_slice(run):
  config = _config(run.data_dir, num_train_steps=2 * STEP, **{"dataset.train_split": "train[10:10]"})
  with pytest.raises(ValueError, match=r"Split 'train\[10:10\]' of dataset 'shapes' holds no examples.*\(tfds "
                                       r"slicing: '"):
    loop.train_and_evaluate(config, run.workdir, progress=False, devices=jax.devices()[:1])
  _assert_intact(run)
