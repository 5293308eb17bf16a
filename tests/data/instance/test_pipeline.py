"""Tests for segjax.data.instance.pipeline: stored examples -> fixed-shape batch fields (torch / numpy references)."""

from __future__ import annotations

import numpy as np
import pytest

from segjax.data import pipeline as semantic_pipeline
from segjax.data.instance import features
from segjax.data.instance import pipeline


def raw_example(h=30, w=50, n=3, seed=0, image_id=7, crowd_last=True):
  """A record as tfds' data source returns it: objects as lists, masks [H, W, 1]."""
  rng = np.random.default_rng(seed)
  masks = []
  for _ in range(n):
    m = np.zeros((h, w), np.uint8)
    r, c = rng.integers(0, h - 5), rng.integers(0, w - 5)
    m[r:r + rng.integers(2, 6), c:c + rng.integers(2, 6)] = 1
    masks.append(m)
  return {"image": rng.integers(0, 256, (h, w, 3), np.uint8), "image_id": image_id, "filename": b"img_7",
          "objects": {"mask": [m[..., None] for m in masks], "bbox": [features.mask_box(m) for m in masks],
                      "label": [np.int64(i % 2 + 1) for i in range(n)],
                      "is_crowd": [bool(crowd_last and i == n - 1) for i in range(n)]}}


def torch_bilinear(image, oh, ow):
  import torch  # pylint: disable=import-outside-toplevel
  x = torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1)[None]
  y = torch.nn.functional.interpolate(x, size=(oh, ow), mode="bilinear", align_corners=False, antialias=False)
  return np.clip(np.rint(y[0].permute(1, 2, 0).numpy()), 0, 255).astype(np.uint8)


def loop_nearest(mask, oh, ow):
  h, w = mask.shape
  out = np.zeros((oh, ow), mask.dtype)
  for i in range(oh):
    for j in range(ow):
      out[i, j] = mask[min(int((i + 0.5) * h / oh), h - 1), min(int((j + 0.5) * w / ow), w - 1)]
  return out


@pytest.mark.parametrize("size", [(64, 64), (20, 24), (30, 50)])
def test_training_fields_resize_to_fit_and_pad(size):
  raw = raw_example()
  f = pipeline.to_fields(features.decode(raw), size, max_instances=5, name="toy")
  oh, ow = pipeline.fit_size(30, 50, size)
  assert (oh, ow) == {(64, 64): (38, 64), (20, 24): (14, 24), (30, 50): (30, 50)}[size]
  assert f["image"].shape == (*size, 3) and f["masks"].shape == (5, *size)
  # Equal but for float32 ties at .5 that round the other way (a few pixels, by 1).
  diff = np.abs(f["image"][:oh, :ow].astype(int) - torch_bilinear(raw["image"], oh, ow))
  assert diff.max() <= 1 and diff.mean() < 0.01
  assert not f["image"][oh:].any() and not f["image"][:, ow:].any()
  for i in range(3):
    np.testing.assert_array_equal(f["masks"][i, :oh, :ow], loop_nearest(raw["objects"]["mask"][i][..., 0], oh, ow))
    # torchvision's resize_boxes: each coordinate times the axis' size ratio.
    want = raw["objects"]["bbox"][i] * np.array([ow / 50, oh / 30, ow / 50, oh / 30])
    np.testing.assert_allclose(f["boxes"][i], want, rtol=1e-6)
  assert not f["masks"][3:].any() and not f["boxes"][3:].any()
  assert f["classes"].tolist() == [1, 2, 1, 0, 0] and f["valid"].tolist() == [1, 1, 1, 0, 0]
  assert f["crowd"].tolist() == [0, 0, 1, 0, 0]
  assert f["image_size"].tolist() == [oh, ow]
  for key, dtype in (("image", np.uint8), ("boxes", np.float32), ("classes", np.int32), ("masks", np.uint8),
                     ("valid", np.float32), ("crowd", np.float32)):
    assert f[key].dtype == dtype, key


def test_image_without_objects_is_a_negative():
  f = pipeline.TrainTransform((32, 32), 4).random_map(raw_example(n=0), np.random.default_rng(0))
  assert sorted(f) == ["boxes", "classes", "crowd", "image", "masks", "valid"]
  assert not f["valid"].any() and not f["classes"].any() and not f["masks"].any()
  assert f["image"].any()


def test_more_instances_than_max_instances_names_example_count_and_key():
  with pytest.raises(ValueError) as e:
    pipeline.TrainTransform((32, 32), 2, name="toy").random_map(raw_example(n=3), np.random.default_rng(0))
  msg = str(e.value)
  for part in ("img_7", "image id 7", "toy", "has 3 instances", "config.instance.max_instances=2",
               "--config.instance.max_instances to at least 3"):
    assert part in msg, (part, msg)


def test_eval_example_pads_without_resizing():
  raw = raw_example(h=30, w=50)
  example = pipeline.eval_example((32, 64), 4, "toy")
  f = example(raw, 0)
  np.testing.assert_array_equal(f["image"][:30, :50], raw["image"])
  assert not f["image"][30:].any() and not f["image"][:, 50:].any()
  np.testing.assert_array_equal(f["boxes"][:3], np.stack(raw["objects"]["bbox"]))
  np.testing.assert_array_equal(f["masks"][:3, :30, :50], np.stack(raw["objects"]["mask"])[..., 0])
  assert f["image_size"].tolist() == [30, 50] and f["image_id"] == 7 and f["scale"].tolist() == [1, 1]
  # The padding example has every field with the same shape and dtype.
  pad = pipeline.eval_padding((32, 64), 4)()
  assert sorted(pad) == sorted(f)
  for key in f:
    assert np.shape(pad[key]) == np.shape(f[key]) and np.asarray(pad[key]).dtype == np.asarray(f[key]).dtype, key
  assert pad["image_id"] == -1 and not pad["valid"].any()
  with pytest.raises(ValueError, match=r"img_7 .* is 30x50, larger than the eval size 16x64.*eval_size"):
    pipeline.eval_example((16, 64), 4, "toy")(raw, 0)
  # Without targets: image, image_size, scale and image_id only, in the example and in the padding.
  bare, bare_pad = pipeline.eval_example((32, 64), 4, targets=False)(raw, 0), pipeline.eval_padding(
      (32, 64), 4, targets=False)()
  assert sorted(bare) == sorted(bare_pad) == ["image", "image_id", "image_size", "scale"]
  np.testing.assert_array_equal(bare["image"], f["image"])
  # fit=True resizes as training does and says by how much.
  fit = pipeline.eval_example((15, 64), 4, "toy", fit=True)(raw, 0)
  assert fit["image_size"].tolist() == [15, 25] and fit["scale"].tolist() == [0.5, 0.5]


def test_train_transform_in_the_semantic_pipeline():
  # The lead's task feeds TrainTransform to segjax.data.pipeline.train_dataset: batches have fixed shapes.
  source = [raw_example(n=i % 4, seed=i, image_id=i) for i in range(6)]
  ds = semantic_pipeline.train_dataset(source, pipeline.TrainTransform((40, 40), 3), batch_size=2, seed=0)
  batch = ds[0]
  assert batch["image"].shape == (2, 40, 40, 3) and batch["masks"].shape == (2, 3, 40, 40)
  assert batch["boxes"].shape == (2, 3, 4) and batch["valid"].shape == (2, 3)
