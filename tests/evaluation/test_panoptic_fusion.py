"""segjax.evaluation.panoptic_fusion: Panoptic FPN's fusion (Detectron2's combine_semantic_and_instance_outputs) on
hand-built images whose answer is known, and on random images against a per-pixel Python loop of the same rules."""

from __future__ import annotations

import numpy as np
import pytest

from segjax.evaluation import panoptic_fusion as pf

H, W = 8, 10
THING = 0


def _box(y0, y1, x0, x1, h=H, w=W):
  m = np.zeros((h, w), bool)
  m[y0:y1, x0:x1] = True
  return m


def _fuse(masks, scores, classes=None, valid=None, semantic=None, **kw):
  masks = np.asarray(masks, bool).reshape(-1, H, W)
  d = masks.shape[0]
  classes = np.arange(1, d + 1) if classes is None else classes
  valid = np.ones((d,), bool) if valid is None else valid
  semantic = np.full((H, W), THING) if semantic is None else semantic
  kw.setdefault("stuff_area_thresh", 1)
  return pf.combine_semantic_and_instance_outputs(masks, np.asarray(scores, np.float32), np.asarray(classes),
                                                  np.asarray(valid), semantic, pf.FusionConfig(**kw))


def test_defaults_are_detectron2s():
  c = pf.FusionConfig()
  assert (c.overlap_threshold, c.stuff_area_thresh, c.instances_score_thresh, c.thing_id) == (0.5, 4096, 0.5, 0)


def test_config_from_keywords_and_mapping():
  c = pf.FusionConfig.from_dict({"overlap_threshold": 0.3}, stuff_area_thresh=10)
  assert c == pf.FusionConfig(overlap_threshold=0.3, stuff_area_thresh=10)
  with pytest.raises(ValueError, match="unknown"):
    pf.FusionConfig.from_dict(overlap=0.3)
  with pytest.raises(ValueError):
    pf.FusionConfig(overlap_threshold=1.5)


def test_single_instance_takes_its_pixels():
  m = _box(1, 4, 2, 6)
  pan, info = _fuse([m], [0.9], classes=[7])
  assert pan.dtype == np.int32 and pan.shape == (H, W)
  np.testing.assert_array_equal(pan, m.astype(np.int32))
  assert info == [{"id": 1, "isthing": True, "score": pytest.approx(0.9), "category_id": 7, "instance_id": 0}]


def test_overlap_above_the_limit_drops_the_second_instance():
  a = _box(0, 4, 0, 4)                 # 16 px
  b = _box(0, 4, 1, 5)                 # 16 px, 12 of them in a: 0.75 > 0.5
  pan, info = _fuse([a, b], [0.9, 0.8])
  np.testing.assert_array_equal(pan, a.astype(np.int32))
  assert [s["instance_id"] for s in info] == [0]


def test_overlap_below_the_limit_keeps_only_free_pixels():
  a = _box(0, 4, 0, 4)
  b = _box(0, 4, 3, 7)                 # 4 of 16 px in a: 0.25 <= 0.5
  pan, info = _fuse([a, b], [0.9, 0.8])
  np.testing.assert_array_equal(pan == 1, a)
  np.testing.assert_array_equal(pan == 2, b & ~a)
  assert [(s["id"], s["instance_id"]) for s in info] == [(1, 0), (2, 1)]


def test_overlap_exactly_at_the_limit_is_kept():
  a = _box(0, 4, 0, 4)
  b = _box(0, 4, 2, 6)                 # 8 of 16 px: ratio 0.5 is not > 0.5
  pan, info = _fuse([a, b], [0.9, 0.8])
  assert len(info) == 2
  np.testing.assert_array_equal(pan == 2, b & ~a)


def test_lower_score_listed_first_still_goes_second():
  a = _box(0, 4, 0, 4)
  b = _box(0, 4, 3, 7)
  pan, info = _fuse([b, a], [0.6, 0.9])  # a (row 1) scores higher: it is laid down first
  assert [s["instance_id"] for s in info] == [1, 0]
  np.testing.assert_array_equal(pan == 1, a)
  np.testing.assert_array_equal(pan == 2, b & ~a)


def test_score_threshold():
  a, b = _box(0, 2, 0, 2), _box(4, 6, 4, 6)
  pan, info = _fuse([a, b], [0.5, 0.49])  # 0.5 is kept (not < 0.5), 0.49 is not
  assert [s["instance_id"] for s in info] == [0]
  np.testing.assert_array_equal(pan, a.astype(np.int32))
  _, info = _fuse([a, b], [0.5, 0.49], instances_score_thresh=0.4)
  assert len(info) == 2


def test_empty_mask_is_skipped():
  pan, info = _fuse([np.zeros((H, W), bool), _box(0, 2, 0, 2)], [0.9, 0.8])
  assert [(s["id"], s["instance_id"]) for s in info] == [(1, 1)]
  assert pan.max() == 1


def test_ties_in_score_keep_input_order():
  # Stable sort: with equal scores, the earlier row is laid down first and owns the shared pixels.
  a = _box(0, 4, 0, 4)
  b = _box(0, 4, 3, 7)
  pan, info = _fuse([a, b], [0.7, 0.7])
  assert [s["instance_id"] for s in info] == [0, 1]
  np.testing.assert_array_equal(pan == 1, a)
  pan, info = _fuse([b, a], [0.7, 0.7])
  assert [s["instance_id"] for s in info] == [0, 1]
  np.testing.assert_array_equal(pan == 1, b)


def test_padding_rows_are_ignored():
  a = _box(0, 4, 0, 4)
  pad = _box(0, 8, 0, 10)              # would cover everything, with the best score
  pan, info = _fuse([pad, a, pad], [1.0, 0.6, 1.0], classes=[9, 3, 9], valid=[False, True, False])
  assert info == [{"id": 1, "isthing": True, "score": pytest.approx(0.6), "category_id": 3, "instance_id": 1}]
  np.testing.assert_array_equal(pan, a.astype(np.int32))


def test_empty_segments_at_the_edge_settings():
  # As Detectron2: overlap_threshold 1.0 keeps an instance that is entirely covered (ratio 1.0 is not > 1.0), and
  # stuff_area_thresh 0 keeps a stuff class whose pixels the things all took; both get an id and no pixels.
  a = _box(0, 4, 0, 4)
  semantic = np.full((H, W), THING)
  semantic[0:2, 0:2] = 5               # inside a
  pan, info = _fuse([a, _box(0, 2, 0, 2)], [0.9, 0.8], semantic=semantic, overlap_threshold=1.0, stuff_area_thresh=0)
  assert [(s["id"], s["isthing"]) for s in info] == [(1, True), (2, True), (3, False)]
  assert info[2]["area"] == 0
  np.testing.assert_array_equal(pan, a.astype(np.int32))


def test_stuff_minimum_area():
  semantic = np.full((H, W), THING)
  semantic[0:2, :] = 5                 # 20 px
  semantic[2:4, 0:5] = 6               # 10 px
  pan, info = _fuse(np.zeros((0, H, W)), [], classes=[], valid=[], semantic=semantic, stuff_area_thresh=10)
  assert info == [{"id": 1, "isthing": False, "category_id": 5, "area": 20},
                  {"id": 2, "isthing": False, "category_id": 6, "area": 10}]  # area == thresh is kept
  _, info = _fuse(np.zeros((0, H, W)), [], classes=[], valid=[], semantic=semantic, stuff_area_thresh=11)
  assert [s["category_id"] for s in info] == [5]  # 10 < 11: dropped
  np.testing.assert_array_equal(pan == 2, semantic == 6)


def test_stuff_area_counts_only_pixels_left_by_things():
  semantic = np.full((H, W), 5)        # 80 px of stuff 5
  thing = _box(0, 8, 0, 5)             # takes 40 of them
  pan, info = _fuse([thing], [0.9], semantic=semantic, stuff_area_thresh=41)
  assert [s["isthing"] for s in info] == [True]
  assert (pan[:, 5:] == 0).all()
  pan, info = _fuse([thing], [0.9], semantic=semantic, stuff_area_thresh=40)
  assert info[1] == {"id": 2, "isthing": False, "category_id": 5, "area": 40}
  np.testing.assert_array_equal(pan == 2, ~thing)


def test_thing_id_never_becomes_stuff():
  semantic = np.full((H, W), THING)
  pan, info = _fuse(np.zeros((0, H, W)), [], classes=[], valid=[], semantic=semantic)
  assert info == [] and (pan == 0).all()
  # Another thing id: 0 is then an ordinary stuff class, 3 is "some object".
  semantic[:4] = 3
  pan, info = _fuse(np.zeros((0, H, W)), [], classes=[], valid=[], semantic=semantic, thing_id=3)
  assert info == [{"id": 1, "isthing": False, "category_id": 0, "area": 40}]
  np.testing.assert_array_equal(pan == 0, semantic == 3)


def test_void_where_nothing_is_confident():
  semantic = np.full((H, W), THING)
  semantic[:, :2] = 4                  # 16 px of stuff, below the threshold
  m = _box(2, 6, 2, 6)
  pan, info = _fuse([m], [0.3], semantic=semantic, stuff_area_thresh=17)
  assert info == [] and (pan == 0).all()


def test_detectron2_default_stuff_area():
  h, w = 64, 128
  semantic = np.zeros((h, w), np.int64)
  semantic[:, :64] = 2                 # 4096 px: kept at the default threshold
  semantic[:63, 64:] = 3               # 4032 px: dropped
  masks = np.zeros((0, h, w), bool)
  pan, info = pf.combine_semantic_and_instance_outputs(masks, np.zeros(0), np.zeros(0, int), np.zeros(0, bool),
                                                       semantic)
  assert info == [{"id": 1, "isthing": False, "category_id": 2, "area": 4096}]
  assert (pan[:, 64:] == 0).all()


def test_uint8_masks_and_valid_none():
  a = _box(0, 4, 0, 4)
  pan8, info8 = pf.combine_semantic_and_instance_outputs(a[None].astype(np.uint8), np.float32([0.9]), [2], None,
                                                         np.zeros((H, W), int))
  panb, infob = _fuse([a], [0.9], classes=[2])
  np.testing.assert_array_equal(pan8, panb)
  assert info8 == infob


def test_shape_errors():
  with pytest.raises(ValueError, match="masks"):
    pf.combine_semantic_and_instance_outputs(np.zeros((1, H, W + 1)), [0.9], [1], [True], np.zeros((H, W), int))
  with pytest.raises(ValueError, match="scores"):
    pf.combine_semantic_and_instance_outputs(np.zeros((2, H, W)), [0.9], [1, 2], [True, True], np.zeros((H, W), int))


def test_batch_matches_per_image():
  rng = np.random.default_rng(3)
  b, d = 3, 4
  masks = rng.random((b, d, H, W)) < 0.3
  scores = rng.random((b, d))
  classes = rng.integers(1, 5, (b, d))
  valid = rng.random((b, d)) < 0.8
  semantic = rng.integers(0, 4, (b, H, W))
  config = pf.FusionConfig(stuff_area_thresh=5)
  out = pf.combine_batch(masks, scores, classes, valid, semantic, config)
  for i in range(b):
    pan, info = pf.combine_semantic_and_instance_outputs(masks[i], scores[i], classes[i], valid[i], semantic[i],
                                                         config)
    np.testing.assert_array_equal(out[i][0], pan)
    assert out[i][1] == info


def _reference(masks, scores, classes, valid, semantic, overlap, stuff_area, score_thresh, thing_id):
  """The same rules as plain Python loops over rows and pixels: no numpy masking, no sorting routine."""
  h, w = semantic.shape
  pan = [[0] * w for _ in range(h)]
  info = []
  rows = [i for i in range(len(scores)) if valid[i]]
  order = []  # insertion sort by score, descending; equal scores keep input order
  for i in rows:
    k = len(order)
    while k > 0 and scores[order[k - 1]] < scores[i]:
      k -= 1
    order.insert(k, i)
  seg = 0
  for i in order:
    if scores[i] < score_thresh:
      continue
    area = inter = 0
    for y in range(h):
      for x in range(w):
        if masks[i][y][x]:
          area += 1
          inter += pan[y][x] != 0
    if area == 0 or inter / area > overlap:
      continue
    seg += 1
    for y in range(h):
      for x in range(w):
        if masks[i][y][x] and pan[y][x] == 0:
          pan[y][x] = seg
    info.append({"id": seg, "isthing": True, "score": float(scores[i]), "category_id": int(classes[i]),
                 "instance_id": i})
  labels = sorted({int(semantic[y][x]) for y in range(h) for x in range(w)})
  for label in labels:
    if label == thing_id:
      continue
    pixels = [(y, x) for y in range(h) for x in range(w) if semantic[y][x] == label and pan[y][x] == 0]
    if len(pixels) < stuff_area:
      continue
    seg += 1
    for y, x in pixels:
      pan[y][x] = seg
    info.append({"id": seg, "isthing": False, "category_id": label, "area": len(pixels)})
  return np.array(pan, np.int32), info


@pytest.mark.parametrize("seed", range(12))
def test_random_images_match_the_reference_loop(seed):
  rng = np.random.default_rng(seed)
  h, w = rng.integers(4, 14, 2)
  d = int(rng.integers(0, 9))
  masks = np.zeros((d, h, w), bool)
  for i in range(d):  # boxes, some overlapping, some empty; plus random pixel noise
    y0, x0 = rng.integers(0, h), rng.integers(0, w)
    masks[i, y0:y0 + rng.integers(0, h), x0:x0 + rng.integers(0, w)] = True
    if rng.random() < 0.3:
      masks[i] ^= rng.random((h, w)) < 0.1
  scores = np.round(rng.random(d), 1)  # coarse: ties happen
  classes = rng.integers(1, 6, d)
  valid = rng.random(d) < 0.85
  semantic = rng.integers(0, 5, (h, w))
  overlap = float(rng.choice([0.0, 0.25, 0.5, 0.75, 1.0]))
  stuff_area = int(rng.integers(0, 12))
  score_thresh = float(rng.choice([0.0, 0.3, 0.5]))
  thing_id = int(rng.integers(0, 5))
  config = pf.FusionConfig(overlap_threshold=overlap, stuff_area_thresh=stuff_area,
                           instances_score_thresh=score_thresh, thing_id=thing_id)
  pan, info = pf.combine_semantic_and_instance_outputs(masks, scores, classes, valid, semantic, config)
  ref_pan, ref_info = _reference(masks, scores, classes, valid, semantic, overlap, stuff_area, score_thresh, thing_id)
  np.testing.assert_array_equal(pan, ref_pan)
  assert info == ref_info
  # Segment ids are 1..n in order, and stuff areas are the map's counts. (A segment may be empty only at the edge
  # settings test_empty_segments_at_the_edge_settings covers, as in Detectron2.)
  assert [s["id"] for s in info] == list(range(1, len(info) + 1))
  for s in info:
    if overlap < 1.0 and stuff_area > 0:
      assert (pan == s["id"]).any()
    if not s["isthing"]:
      assert s["area"] == int((pan == s["id"]).sum())
