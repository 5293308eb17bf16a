"""predict.py on a folder of PNGs with a tiny checkpoint: files, palette values, a corrupt file skipped."""

import numpy as np
import pytest
from PIL import Image

from segjax import experiment
from segjax.apps import predict
from segjax.evaluation import inference
from segjax.data import datasets
from tests.conftest import random_checkpoint, tiny_config


@pytest.fixture(scope="module")
def trained(shapes_data_dir, tmp_path_factory):
  """A checkpoint of random parameters (`random_checkpoint`): predict.py's output is compared with the Segmenter's."""
  config = tiny_config(shapes_data_dir, **{"mesh.data": 1, "model.depth": 1})
  workdir = tmp_path_factory.mktemp("trained")
  random_checkpoint(config, workdir)
  return config, str(workdir)


def _inputs(directory):
  rng = np.random.RandomState(0)
  images = {}
  for name, size in (("a", (32, 40)), ("b", (45, 30)), ("c", (20, 20))):
    images[name] = rng.randint(0, 256, (*size, 3)).astype(np.uint8)
    Image.fromarray(images[name]).save(directory / f"{name}.png")
  (directory / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
  (directory / "notes.txt").write_text("not an image: ignored")
  return images


@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_predict_writes_palette_labels_overlays_and_probabilities(trained, tmp_path, mode):
  config, workdir = trained
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.inference.mode = mode
    config.inference.tile_size = (16, 16)
  (tmp_path / "in").mkdir()
  images = _inputs(tmp_path / "in")
  failed = predict.run(config, workdir, str(tmp_path / "in"), str(tmp_path / "out"), probabilities=True,
                       progress=False)
  assert [p.name for p, _ in failed] == ["bad.png"]
  assert "bad.png" in failed[0][1] and "re-export it" in failed[0][1]
  spec = datasets.get_spec(config.dataset)
  segmenter = inference.Segmenter([experiment.load_member(config, workdir)], spec.num_classes,
                                  inference.InferenceParams.from_config(config))
  names = sorted(p.name for p in (tmp_path / "out").iterdir())
  assert names == sorted(f"{s}{suffix}" for s in images for suffix in (".png", "_overlay.png", "_probs.npy"))
  for stem, image in images.items():
    with Image.open(tmp_path / "out" / f"{stem}.png") as img:
      assert img.mode == "P"
      assert img.getpalette()[:3 * spec.num_classes] == [c for rgb in spec.palette for c in rgb]
      labels = np.asarray(img)
    scores = segmenter.image_scores(image)
    np.testing.assert_array_equal(labels, scores.argmax(-1))
    probs = np.load(tmp_path / "out" / f"{stem}_probs.npy")
    assert probs.dtype == np.float16 and probs.shape == scores.shape
    np.testing.assert_allclose(probs, scores, atol=1e-3)
    with Image.open(tmp_path / "out" / f"{stem}_overlay.png") as img:
      assert img.size == (image.shape[1], image.shape[0]) and img.mode == "RGB"


def test_predict_refuses_bad_inputs(trained, tmp_path):
  config, workdir = trained
  with pytest.raises(FileNotFoundError, match="--input=.*missing does not exist"):
    predict.run(config, workdir, str(tmp_path / "missing"), str(tmp_path / "out"), progress=False)
  # Grey and RGBA are converted as training converts them (tests/data/folder/ compares with the stored arrays).
  gray = np.arange(64, dtype=np.uint8).reshape(8, 8)
  Image.fromarray(gray).save(tmp_path / "gray.png")
  np.testing.assert_array_equal(predict.read_image(tmp_path / "gray.png", 3), np.repeat(gray[..., None], 3, -1))
  rgba = np.arange(256, dtype=np.uint8).reshape(8, 8, 4)
  Image.fromarray(rgba).save(tmp_path / "rgba.png")
  np.testing.assert_array_equal(predict.read_image(tmp_path / "rgba.png", 3), rgba[..., :3])
  Image.frombytes("I;16", (8, 8), np.zeros((8, 8), "<u2").tobytes()).save(tmp_path / "wide.png")
  with pytest.raises(ValueError, match=r"wide.png has mode I;16 \(16-bit or float\).*save it as 8-bit RGB"):
    predict.read_image(tmp_path / "wide.png", 3)


# ------------------------------------------------------------ never overwrite


def _bytes(directory):
  return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def test_output_equal_to_input_is_refused_before_anything_is_written(trained, tmp_path):
  config, workdir = trained
  (tmp_path / "in").mkdir()
  _inputs(tmp_path / "in")
  before = _bytes(tmp_path / "in")
  for output in (tmp_path / "in", tmp_path / "in" / ".." / "in"):
    with pytest.raises(ValueError, match=r"--output=.* is the --input directory: give another directory, e\.g\. "
                                         r"--output=.*in_pred"):
      predict.run(config, workdir, str(tmp_path / "in"), str(output), progress=False)
  assert _bytes(tmp_path / "in") == before


def test_an_output_that_is_an_input_is_refused_even_with_overwrite(trained, tmp_path):
  config, workdir = trained
  (tmp_path / "in").mkdir()
  _inputs(tmp_path / "in")
  (tmp_path / "out").mkdir()
  (tmp_path / "out" / "a.png").symlink_to(tmp_path / "in" / "a.png")  # writing out/a.png would replace in/a.png
  before = _bytes(tmp_path / "in")
  with pytest.raises(ValueError, match=r"would write .*out/a\.png \(for .*in/a\.png\) over the input image "
                                       r".*in/a\.png.*Inputs are never overwritten, --overwrite included"):
    predict.run(config, workdir, str(tmp_path / "in"), str(tmp_path / "out"), overwrite=True, progress=False)
  assert _bytes(tmp_path / "in") == before
  # A single file whose label map would be itself: x.png segmented into its own folder.
  with pytest.raises(ValueError, match=r"over the input image .*in/c\.png"):
    predict.run(config, workdir, str(tmp_path / "in" / "c.png"), str(tmp_path / "in"), overwrite=True,
                progress=False)
  assert _bytes(tmp_path / "in") == before


def test_inputs_sharing_a_stem_get_distinct_outputs_and_the_summary_counts_files(trained, tmp_path, capsys):
  config, workdir = trained
  (tmp_path / "in").mkdir()
  rng = np.random.RandomState(1)
  x_png = rng.randint(0, 256, (24, 24, 3)).astype(np.uint8)
  x_bmp = rng.randint(0, 256, (16, 28, 3)).astype(np.uint8)  # another image behind the same stem
  Image.fromarray(x_png).save(tmp_path / "in" / "x.png")
  Image.fromarray(x_bmp).save(tmp_path / "in" / "x.bmp")
  (tmp_path / "in" / "y.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
  failed = predict.run(config, workdir, str(tmp_path / "in"), str(tmp_path / "out"), progress=False)
  assert [p.name for p, _ in failed] == ["y.png"]
  assert "Wrote 2 of 3 images" in capsys.readouterr().out
  assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
      "x.bmp.png", "x.bmp_overlay.png", "x.png.png", "x.png_overlay.png"]
  spec = datasets.get_spec(config.dataset)
  segmenter = inference.Segmenter([experiment.load_member(config, workdir)], spec.num_classes,
                                  inference.InferenceParams.from_config(config))
  for name, image in (("x.png", x_png), ("x.bmp", x_bmp)):
    with Image.open(tmp_path / "out" / f"{name}.png") as img:
      np.testing.assert_array_equal(np.asarray(img), segmenter.image_scores(image).argmax(-1))


def test_existing_outputs_are_replaced_only_with_overwrite(trained, tmp_path):
  config, workdir = trained
  (tmp_path / "in").mkdir()
  images = _inputs(tmp_path / "in")
  (tmp_path / "out").mkdir()
  (tmp_path / "out" / "b_overlay.png").write_bytes(b"an earlier result")
  with pytest.raises(ValueError, match=r"1 output file exist already in .*out \(.*b_overlay\.png\): pass "
                                       r"--overwrite to replace them"):
    predict.run(config, workdir, str(tmp_path / "in"), str(tmp_path / "out"), progress=False)
  assert _bytes(tmp_path / "out") == {"b_overlay.png": b"an earlier result"}  # nothing else written either
  predict.run(config, workdir, str(tmp_path / "in"), str(tmp_path / "out"), overwrite=True, progress=False)
  with Image.open(tmp_path / "out" / "b_overlay.png") as img:
    assert img.size == (images["b"].shape[1], images["b"].shape[0])


def test_an_output_appearing_during_the_run_is_not_replaced(trained, tmp_path, monkeypatch):
  config, workdir = trained
  (tmp_path / "in").mkdir()
  _inputs(tmp_path / "in")
  out = tmp_path / "out"
  real = predict.read_image

  def read_and_race(path, num_channels):
    if path.name == "b.png":  # another process writes b.png after the plan was checked
      (out / "b.png").write_bytes(b"theirs")
    return real(path, num_channels)

  monkeypatch.setattr(predict, "read_image", read_and_race)
  failed = predict.run(config, workdir, str(tmp_path / "in"), str(out), progress=False)
  assert sorted(p.name for p, _ in failed) == ["b.png", "bad.png"]
  assert (out / "b.png").read_bytes() == b"theirs"
