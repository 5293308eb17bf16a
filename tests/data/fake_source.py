"""An in-memory source of examples whose pixels say where they came from, for the pipeline and augmentation tests."""

import numpy as np

from segjax.data import datasets

SPEC = datasets.DatasetSpec(name="fake", tfds_name="fake", class_names=("a", "b", "c"),
                            palette=((0, 0, 0), (1, 1, 1), (2, 2, 2)), ignore_label=255, num_channels=3,
                            splits=("train",), needs_manual_dir=False)


def make_source(sizes, seed=0):
  """Examples whose red channel encodes the label (label * 60 + 10), so alignment is checkable per pixel."""
  rng = np.random.default_rng(seed)
  source = []
  for i, (h, w) in enumerate(sizes):
    label = rng.integers(0, 3, (h, w)).astype(np.uint8)
    label[rng.random((h, w)) < 0.2] = 255
    image = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
    image[..., 0] = np.where(label == 255, 250, label.astype(np.int32) * 60 + 10)
    # Column index in the green channel reveals flips.
    image[..., 1] = np.arange(w)[None, :] % 256
    source.append({"image": image, "label": label[..., None], "filename": f"ex{i}".encode()})
  return source
