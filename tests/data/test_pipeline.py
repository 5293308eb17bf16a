"""Input pipeline: joint crop/flip, exact eval coverage across processes, determinism and resumable state."""

import chex
import numpy as np
import pytest

from segjax.data import pipeline
from tests.conftest import semantic_eval_batches, semantic_train_dataset
from tests.data.fake_source import SPEC, make_source

def test_to_example_masks_ignore_and_rejects_bad_ids():
  src = make_source([(5, 6)])
  ex = pipeline.to_example(src[0], 255, 3)
  raw = src[0]["label"][..., 0]
  np.testing.assert_array_equal(ex.weight, (raw != 255).astype(np.float32))
  np.testing.assert_array_equal(ex.label, np.where(raw == 255, 0, raw))
  bad = dict(src[0], label=np.full((5, 6, 1), 7, np.uint8))
  with pytest.raises(ValueError, match=r"ex0.*label id 7"):
    pipeline.to_example(bad, 255, 3)
  with pytest.raises(ValueError, match="same height and width"):
    pipeline.to_example(dict(src[0], label=np.zeros((4, 6, 1), np.uint8)), 255, 3)


def test_random_crop_keeps_image_and_mask_aligned():
  source = make_source([(40, 50), (20, 24), (31, 17)])  # larger and smaller than the crop
  op = pipeline.RandomCrop((24, 32), ignore_label=255, num_classes=3)
  lefts = set()
  for trial in range(30):
    raw = source[trial % 3]
    out = op.random_map(raw, np.random.default_rng(trial))
    chex.assert_shape([out["image"], out["label"]], [(24, 32, 3), (24, 32)])
    valid = out["weight"] > 0
    np.testing.assert_array_equal(out["image"][..., 0][valid], out["label"][valid] * 60 + 10)
    # Padding and ignore pixels carry weight 0 and label 0, never a real class by accident.
    assert set(np.unique(out["label"][~valid])) <= {0}
    # The host does not flip: columns stay in increasing order (green channel = source column).
    cols = out["image"][0, :, 1].astype(int)
    real = out["image"][0, :, 0] != 0
    assert np.all(np.diff(cols[real]) == 1)
    if trial % 3 == 0:
      lefts.add(int(cols[0]))
  assert len(lefts) > 1  # the window moves


@pytest.mark.parametrize("scale", [0.5, 0.37, 1.6])
def test_rescale_matches_device_resize_and_nearest_labels(scale):
  """Host rescaling (dataset.train_scale) against jax.image.resize, the resize inference's TTA scales use, and a
  brute-force nearest-pixel loop for the mask."""
  import jax  # pylint: disable=import-outside-toplevel
  src = make_source([(36, 50)])[0]
  ex = pipeline.to_example(src, 255, 3)
  out = pipeline.rescale(ex, scale)
  oh, ow = int(36 * scale + 0.5), int(50 * scale + 0.5)
  chex.assert_shape([out.image, out.label], [(oh, ow, 3), (oh, ow)])
  chex.assert_type(out.image, np.uint8)
  ref = np.asarray(jax.image.resize(ex.image.astype(np.float32)[None], (1, oh, ow, 3), "bilinear",
                                    antialias=False))[0]
  assert np.abs(out.image.astype(np.float32) - ref).max() <= 0.5 + 1e-3  # only the rounding to uint8
  for i in range(oh):
    for j in range(ow):
      si, sj = min(int((i + 0.5) * 36 / oh), 35), min(int((j + 0.5) * 50 / ow), 49)
      assert out.label[i, j] == ex.label[si, sj] and out.weight[i, j] == ex.weight[si, sj]


def test_random_crop_with_scale_range_resizes_before_cropping():
  source = make_source([(40, 60)])
  fixed = pipeline.RandomCrop((20, 30), ignore_label=255, num_classes=3, scale_range=(0.5, 0.5))
  out = fixed.random_map(source[0], np.random.default_rng(0))
  # At scale 0.5 the 40x60 frame becomes exactly the 20x30 crop: nothing is cut away or padded.
  np.testing.assert_array_equal(out["label"], pipeline.rescale(pipeline.to_example(source[0], 255, 3), 0.5).label)
  jitter = pipeline.RandomCrop((16, 16), ignore_label=255, num_classes=3, scale_range=(0.5, 2.0))
  widths = set()
  for trial in range(20):  # the green channel holds the source column: its step reveals the drawn scale
    cols = jitter.random_map(source[0], np.random.default_rng(trial))["image"][0, :, 1].astype(float)
    widths.add(round(float(cols[-1] - cols[0]) / 15, 1))  # ~1 / scale
  assert len(widths) > 5


# Row layouts of a global batch over processes: one process; two contiguous halves; rows interleaved (a mesh whose
# devices are not ordered by process); three processes.
LAYOUTS = {"1": [[0, 1, 2, 3, 4, 5]], "2-blocks": [[0, 1, 2], [3, 4, 5]], "2-interleaved": [[0, 2, 4], [1, 3, 5]],
           "3": [[0, 1], [2, 3], [4, 5]]}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_eval_batches_cover_every_pixel_exactly_once(layout):
  sizes = [(10, 12), (16, 16), (7, 9), (16, 10), (3, 16), (12, 12), (9, 9)]
  source = make_source(sizes)
  expected_valid = sum(int((s["label"] != 255).sum()) for s in source)
  seen, total_valid, batch_counts = [], 0, set()
  for rows in LAYOUTS[layout]:
    batches = list(semantic_eval_batches(source, spec=SPEC, batch_size=6, size=(16, 16), rows=rows, num_threads=1))
    batch_counts.add(len(batches))
    for number, b in enumerate(batches):
      chex.assert_shape([b["image"], b["weight"]], [(len(rows), 16, 16, 3), (len(rows), 16, 16)])
      for i, index in enumerate(b["index"]):
        if index < 0:
          assert b["weight"][i].sum() == 0 and number * 6 + rows[i] >= len(sizes)
          continue
        assert index == number * 6 + rows[i]  # row r of global batch b is example 6b + r
        seen.append(int(index))
        h, w = sizes[index]
        raw = source[index]["label"][..., 0]
        np.testing.assert_array_equal(b["weight"][i][:h, :w], raw != 255)
        np.testing.assert_array_equal(b["label"][i][:h, :w][raw != 255], raw[raw != 255])
        assert b["weight"][i][h:].sum() == 0 and b["weight"][i][:, w:].sum() == 0
      total_valid += int(b["weight"].sum())
  assert sorted(seen) == list(range(len(sizes)))
  assert total_valid == expected_valid
  assert batch_counts == {2}  # every process runs the same number of steps: ceil(7 / 6)


def test_eval_rejects_images_larger_than_eval_size():
  source = make_source([(20, 20)])
  with pytest.raises(ValueError, match="eval_size"):
    list(semantic_eval_batches(source, spec=SPEC, batch_size=1, size=(16, 16)))


def _dataset(source, seed, rows=None, batch_size=4):
  return semantic_train_dataset(source, spec=SPEC, batch_size=batch_size, crop_size=(8, 8), seed=seed, rows=rows)


def _loader(source, seed, rows=None, start_step=0, worker_count=0, batch_size=4):
  return pipeline.train_iterator(_dataset(source, seed, rows, batch_size), start_step=start_step,
                                 worker_count=worker_count)


def test_train_batches_are_a_function_of_seed_and_step():
  source = make_source([(12, 12), (10, 14), (16, 9)] * 4)
  a = [next(it) for it in [_loader(source, 3)] for _ in range(7)]
  # A restart at step 4 (what train_and_evaluate does with the checkpointed step) continues the same stream.
  resumed = _loader(source, 3, start_step=4)
  for x in a[4:]:
    y = next(resumed)
    for k in ("image", "label", "weight"):
      np.testing.assert_array_equal(x[k], y[k])
  # Random access agrees with iteration: batch s is dataset[s].
  np.testing.assert_array_equal(_dataset(source, 3)[5]["label"], a[5]["label"])
  # Epochs are reshuffled and re-cropped: 12 records, 4 per batch -> batches 0 and 3 start different epochs.
  assert not np.array_equal(a[0]["image"], a[3]["image"])
  other = next(_loader(source, 4))
  assert not np.array_equal(other["image"], a[0]["image"])


class _CountingSource(list):
  """A source that records which records were read."""

  def __init__(self, items):
    super().__init__(items)
    self.reads = []

  def __getitem__(self, index):
    self.reads.append(index)
    return super().__getitem__(index)


@pytest.mark.parametrize("layout", [k for k in LAYOUTS if k != "1"])
def test_processes_read_their_rows_of_the_same_global_batches(layout):
  # Each image is constant-valued with its index, so a batch reveals which records it holds. 13 records in global
  # batches of 6: epochs straddle batches, and nothing may be dropped.
  n = 13
  records = [{"image": np.full((8, 8, 3), i, np.uint8), "label": np.zeros((8, 8, 1), np.uint8), "filename": b""}
             for i in range(n)]
  whole = [next(it) for it in [_loader(records, 0, batch_size=6)] for _ in range(5)]
  stream = [int(img[0, 0, 0]) for b in whole for img in b["image"]]
  assert sorted(stream[:n]) == list(range(n)) and sorted(stream[n:2 * n]) == list(range(n))  # epochs 1 and 2
  assert stream[:n] != stream[n:2 * n]  # reshuffled
  for rows in LAYOUTS[layout]:
    source = _CountingSource(records)
    it = _loader(source, 0, rows=rows, batch_size=6)
    for b in whole:
      mine = next(it)
      for k in ("image", "label", "weight"):
        np.testing.assert_array_equal(mine[k], b[k][rows])  # exactly its rows of the global batch
    it.close()
  # A process reads only its rows (plus what the prefetch buffer reads ahead), not the whole batch.
  one = _CountingSource(records)
  for s in range(3):
    _dataset(one, 0, rows=[1, 4], batch_size=6)[s]
  assert len(one.reads) == 3 * 2


def test_train_batches_do_not_depend_on_worker_count():
  """Decoding workers are a speed knob: 0, 1 or 2 worker processes give the same batches, also when resuming."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  flags.FLAGS(["pytest"])  # grain's worker processes read absl flags
  source = make_source([(12, 12), (10, 14), (16, 9)] * 3)
  reference = [next(it) for it in [_loader(source, 5)] for _ in range(6)]
  for workers, start in ((1, 0), (2, 0), (2, 3)):
    it = _loader(source, 5, start_step=start, worker_count=workers)
    for x in reference[start:]:
      y = next(it)
      for k in ("image", "label", "weight"):
        np.testing.assert_array_equal(x[k], y[k])
    it.close()
