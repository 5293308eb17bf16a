"""predict.py on a folder of PNGs with a tiny checkpoint: files, palette values, a corrupt file skipped."""

import numpy as np
import pytest
from PIL import Image

from segjax import inference, predict
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
  segmenter = inference.Segmenter([inference.load_member(config, workdir)], spec.num_classes,
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
  Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "gray.png")
  with pytest.raises(ValueError, match=r"gray.png is grayscale \(1 channels\) but the model takes 3"):
    predict.read_image(tmp_path / "gray.png", 3)
  Image.fromarray(np.zeros((8, 8, 4), np.uint8)).save(tmp_path / "rgba.png")
  with pytest.raises(ValueError, match="rgba.png is RGBA .*drop the alpha channel"):
    predict.read_image(tmp_path / "rgba.png", 3)
