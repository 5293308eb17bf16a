"""Tests for segjax.data.instance.augment against numpy / torch references: flips, 2x and 0.5x crops, box loops."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax.data.instance import augment
from tests.data.instance.common import loop_box

H, W, N = 24, 32, 4


def make_batch(batch=2, seed=0):
  """Rectangles and a disk per example, the last row padding; instance 2 a crowd region."""
  rng = np.random.default_rng(seed)
  masks = np.zeros((batch, N, H, W), np.uint8)
  for b in range(batch):
    masks[b, 0, 2:9, 3:12] = 1
    masks[b, 1, 15:22, 20:31] = 1
    yy, xx = np.mgrid[:H, :W]
    masks[b, 2] = (yy - 12) ** 2 + (xx - 16) ** 2 <= 16
  boxes = np.array([[loop_box(m) if m.any() else [0] * 4 for m in ex] for ex in masks], np.float32)
  return {"image": rng.integers(0, 256, (batch, H, W, 3), np.uint8), "masks": masks, "boxes": boxes,
          "classes": np.tile(np.array([1, 2, 3, 0], np.int32), (batch, 1)),
          "valid": np.tile(np.array([1, 1, 1, 0], np.float32), (batch, 1)),
          "crowd": np.tile(np.array([0, 0, 1, 0], np.float32), (batch, 1)), "image_id": np.arange(batch)}


def run(settings, key, batch):
  return jax.tree.map(np.asarray, jax.jit(functools.partial(augment.augment_instances, settings))(key, batch))


def params(settings, key, i):
  s, off, flip = augment.sample_params(settings, jax.random.fold_in(key, i), H, W)
  return float(s), [int(v) for v in np.asarray(off)], bool(flip)


def check_boxes_and_drops(out, valid_in):
  """Boxes are the loop boxes of the output masks; an instance without pixels is dropped entirely."""
  for b in range(len(out["masks"])):
    for n in range(N):
      m = out["masks"][b, n]
      if m.any():
        assert out["boxes"][b, n].tolist() == loop_box(m)
        assert out["valid"][b, n] == valid_in[b, n] == 1 and out["classes"][b, n] == n + 1
      else:
        assert out["valid"][b, n] == 0 and out["classes"][b, n] == 0 and out["crowd"][b, n] == 0
        assert not out["boxes"][b, n].any()


def test_flip_mirrors_image_masks_and_boxes():
  batch = make_batch()
  out = run(augment.InstanceAugment(hflip_prob=1.0), jax.random.key(0), batch)
  np.testing.assert_array_equal(out["image"], batch["image"][:, :, ::-1].astype(np.float32))
  np.testing.assert_array_equal(out["masks"], batch["masks"][..., ::-1])
  x1, y1, x2, y2 = np.moveaxis(batch["boxes"][:, :3], -1, 0)
  np.testing.assert_array_equal(out["boxes"][:, :3], np.stack([W - x2, y1, W - x1, y2], -1))
  np.testing.assert_array_equal(out["crowd"], batch["crowd"])
  np.testing.assert_array_equal(out["image_id"], batch["image_id"])  # other fields pass through
  check_boxes_and_drops(out, batch["valid"])


def test_zoom_in_crops_a_pixel_aligned_window():
  import torch  # pylint: disable=import-outside-toplevel
  settings = augment.InstanceAugment(scale_range=(2.0, 2.0))
  batch, key = make_batch(batch=4), jax.random.key(1)
  out = run(settings, key, batch)
  up = torch.nn.functional.interpolate(torch.from_numpy(batch["image"].astype(np.float32)).permute(0, 3, 1, 2),
                                       scale_factor=2, mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
  offsets = set()
  for b in range(4):
    _, (oy, ox), _ = params(settings, key, b)
    assert 0 <= oy <= H and 0 <= ox <= W
    offsets.add((oy, ox))
    big = np.repeat(np.repeat(batch["masks"][b], 2, axis=1), 2, axis=2)
    np.testing.assert_array_equal(out["masks"][b], big[:, oy:oy + H, ox:ox + W] * batch["valid"][b, :, None, None])
    np.testing.assert_allclose(out["image"][b], up[b, oy:oy + H, ox:ox + W].numpy(), atol=1e-3)
  assert len(offsets) == 4  # one key per example
  check_boxes_and_drops(out, batch["valid"])


def test_zoom_out_places_the_image_inside_zeros():
  settings = augment.InstanceAugment(scale_range=(0.5, 0.5))
  batch, key = make_batch(batch=3), jax.random.key(2)
  out = run(settings, key, batch)
  for b in range(3):
    _, (oy, ox), _ = params(settings, key, b)
    top, left = -oy, -ox
    assert 0 <= top <= H // 2 and 0 <= left <= W // 2
    want = np.zeros((N, H, W), np.uint8)
    # Output pixel i samples input 2 (i - top) + 0.5: its nearest pixel is 2 (i - top) + 1.
    want[:, top:top + H // 2, left:left + W // 2] = batch["masks"][b][:, 1::2, 1::2]
    np.testing.assert_array_equal(out["masks"][b], want * batch["valid"][b, :, None, None].astype(np.uint8))
    outside = np.ones((H, W), bool)
    outside[top:top + H // 2, left:left + W // 2] = False
    assert not out["image"][b][outside].any()
  check_boxes_and_drops(out, batch["valid"])


def test_cropped_out_instances_are_dropped():
  # At 2x the 7x9 rectangle in the top-left corner leaves any window that starts past its right or bottom edge.
  settings = augment.InstanceAugment(scale_range=(2.0, 2.0))
  batch = make_batch(batch=16, seed=3)
  out = run(settings, jax.random.key(5), batch)
  dropped = [b for b in range(16) if out["valid"][b, 0] == 0]
  kept = [b for b in range(16) if out["valid"][b, 0] == 1]
  assert dropped and kept
  for b in dropped:
    _, (oy, ox), _ = params(settings, jax.random.key(5), b)
    assert oy >= 18 or ox >= 24  # the rectangle spans rows 4..17 and columns 6..23 at 2x
    assert out["classes"][b, 0] == 0 and not out["masks"][b, 0].any() and not out["boxes"][b, 0].any()
  check_boxes_and_drops(out, batch["valid"])


def loop_reference(example, s, oy, ox, flip):
  """Masks of one example by a per-pixel loop of the mapping in the module doc (float64)."""
  masks = example["masks"]
  out = np.zeros_like(masks)
  for i in range(H):
    for j in range(W):
      r = np.floor((i + 0.5 + oy) / s - 0.5 + 0.5)
      x = (j + 0.5 + ox) / s - 0.5
      c = np.floor((W - 1 - x if flip else x) + 0.5)
      if 0 <= r < H and 0 <= c < W:
        out[:, i, j] = masks[:, int(r), int(c)]
  return out


def test_random_jitter_matches_a_loop_and_is_deterministic():
  settings = augment.InstanceAugment(hflip_prob=0.5, scale_range=(0.4, 1.8))
  batch, key = make_batch(batch=6, seed=4), jax.random.key(7)
  out = run(settings, key, batch)
  flips, mismatch = set(), 0
  for b in range(6):
    s, (oy, ox), flip = params(settings, key, b)
    flips.add(flip)
    assert 0.4 <= s <= 1.8
    want = loop_reference({k: v[b] for k, v in batch.items()}, s, oy, ox, flip)
    # float32 vs float64 positions may round a pixel the other way exactly at a tie.
    mismatch += int((out["masks"][b] != want * batch["valid"][b, :, None, None].astype(np.uint8)).sum())
  assert mismatch <= 6, mismatch
  assert flips == {True, False}
  check_boxes_and_drops(out, batch["valid"])
  again = run(settings, key, batch)
  for k in out:
    np.testing.assert_array_equal(out[k], again[k])
  other = run(settings, jax.random.key(8), batch)
  assert not np.array_equal(other["masks"], out["masks"])
  # Example i's draws depend on the key and its position only, not on the batch size.
  single = run(settings, key, {k: v[:1] for k, v in batch.items()})
  np.testing.assert_array_equal(single["masks"][0], out["masks"][0])
  eager = augment.augment_instances(settings, key, batch)
  np.testing.assert_array_equal(np.asarray(eager["masks"]), out["masks"])


def test_identity_keeps_the_host_boxes_and_settings_are_checked():
  batch = make_batch()
  batch["boxes"] = batch["boxes"] + 0.25  # e.g. COCO's own boxes, not the masks' tight boxes
  out = run(augment.InstanceAugment(), jax.random.key(0), batch)
  np.testing.assert_array_equal(out["boxes"], batch["boxes"])
  assert out["image"].dtype == np.float32
  for bad in (dict(scale_range=(0.0, 1.0)), dict(scale_range=(2.0, 1.0)), dict(hflip_prob=1.5),
              dict(min_pixels=0)):
    with pytest.raises(ValueError):
      augment.InstanceAugment(**bad)


def test_boxes_from_masks_matches_loop():
  rng = np.random.default_rng(0)
  masks = (rng.uniform(size=(5, 9, 11)) < 0.05).astype(np.uint8)
  masks[4] = 0
  boxes, count = jax.jit(augment.boxes_from_masks)(jnp.asarray(masks))
  for m, box, c in zip(masks, np.asarray(boxes), np.asarray(count)):
    assert c == m.sum()
    assert box.tolist() == (loop_box(m) if m.any() else [0, 0, 0, 0])


def test_semantic_map_moves_with_the_masks_and_outside_is_ignored():
  # Panoptic FPN's sem_seg: the same nearest-pixel mapping as the masks (the loop), SEM_IGNORE outside the image.
  settings = augment.InstanceAugment(hflip_prob=0.5, scale_range=(0.4, 1.8))
  batch, key = make_batch(batch=4, seed=5), jax.random.key(3)
  rng = np.random.default_rng(1)
  batch["sem_seg"] = rng.integers(0, 5, (4, H, W)).astype(np.uint8)
  out = run(settings, key, batch)
  without = run(settings, key, {k: v for k, v in batch.items() if k != "sem_seg"})
  for k in without:  # the instance fields do not depend on the semantic map
    np.testing.assert_array_equal(out[k], without[k])
  mismatch = 0
  for b in range(4):
    s, (oy, ox), flip = params(settings, key, b)
    # Through the loop: the map as a mask of (value + 1), 0 outside the image.
    moved = loop_reference({"masks": batch["sem_seg"][b][None].astype(np.int32) + 1}, s, oy, ox, flip)[0]
    want = np.where(moved == 0, augment.SEM_IGNORE, moved - 1)
    mismatch += int((out["sem_seg"][b] != want).sum())
  assert mismatch <= 6, mismatch
  assert (out["sem_seg"] == augment.SEM_IGNORE).any() and out["sem_seg"].dtype == np.uint8
