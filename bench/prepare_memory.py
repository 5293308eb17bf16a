"""Peak memory of preparing a folder dataset of one large image/mask pair.

    python bench/prepare_memory.py                      # 8000 x 8000 RGB PNG + index mask
    python bench/prepare_memory.py --rgb_mask           # the mask colour-coded instead
    python bench/prepare_memory.py --repo /tmp/orig     # another checkout (e.g. a git worktree of the old code)

Writes one RGB image (smooth gradient plus noise, so PNG compression takes seconds, not minutes) and its mask
(rectangles of 4 classes; --rgb_mask: the same in palette colours) into a temporary folder, then prepares it with
`segjax.data.folder` in a fresh subprocess (from --repo) and prints that child's peak resident memory: VmHWM of
/proc/self/status, read by the child itself at its end. Not `getrusage(RUSAGE_CHILDREN).ru_maxrss`: Linux carries
the parent's resident size at fork time into a child's ru_maxrss across exec, so a parent that has just written an
8000 x 8000 image (hundreds of MiB) would be counted as the child's peak. A separate child prepares an 8 x 8 copy,
whose peak is the cost of the imports (TensorFlow, tfds); the difference is what preparing the large pair costs,
set beside the size of the decoded image.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

_PALETTE = ((0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25))

_CHILD = r"""
import pathlib, resource, sys, time
import tensorflow_datasets as tfds
import segjax
from segjax.data import folder
root, big = pathlib.Path(sys.argv[1]), sys.argv[2] == "1"
rgb = sys.argv[3] == "1"
kw = dict(mask_format="rgb", palette=%r) if rgb else {}
params = folder.FolderParams(images_dir=root / "images", masks_dir=root / "masks", class_names=("a", "b", "c", "d"),
                             split_fractions=(("train", 1.0),), **kw)
start = time.perf_counter()
builder = folder.make_builder(params, data_dir=root / "data")
builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
print(f"segjax from {pathlib.Path(segjax.__file__).parent}; prepared in {time.perf_counter() - start:.1f} s",
      file=sys.stderr)
# The child's own high-water mark (ru_maxrss would include the parent's size at fork).
print("VmHWM_KiB", next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")))
""" % (_PALETTE,)


def _write(root: pathlib.Path, size: int, rgb_mask: bool) -> int:
  (root / "images").mkdir(parents=True)
  (root / "masks").mkdir()
  rng = np.random.default_rng(0)
  ramp = np.linspace(0, 200, size, dtype=np.float32)
  image = np.empty((size, size, 3), np.uint8)
  for c in range(3):
    image[..., c] = (ramp[:, None] * (c + 1) / 3 + ramp[None, :] * (3 - c) / 3) / 2
  image += rng.integers(0, 32, (size, size, 3), np.uint8)
  Image.fromarray(image).save(root / "images" / "x.png", compress_level=1)
  ids = np.zeros((size, size), np.uint8)
  q = size // 4
  for k in range(1, 4):
    ids[k * q // 2:k * q // 2 + 2 * q, k * q:k * q + q] = k
  if rgb_mask:
    Image.fromarray(np.asarray(_PALETTE, np.uint8)[ids]).save(root / "masks" / "x.png")
  else:
    Image.fromarray(ids).save(root / "masks" / "x.png")
  return image.nbytes


def _child_peak(repo: pathlib.Path, root: pathlib.Path, rgb_mask: bool) -> int:
  """Peak resident bytes of a fresh process preparing the folder at `root` with `repo`'s segjax."""
  env = dict(os.environ, PYTHONPATH=str(repo) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  out = subprocess.run([sys.executable, "-c", _CHILD, str(root), "1", str(int(rgb_mask))], cwd=repo, env=env,
                       check=True, stdout=subprocess.PIPE, text=True).stdout
  return int(out.split("VmHWM_KiB")[-1].split()[0]) * 1024


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--size", type=int, default=8000, help="image side (square)")
  parser.add_argument("--rgb_mask", action="store_true", help="colour-coded mask instead of an index mask")
  parser.add_argument("--repo", default=str(pathlib.Path(__file__).resolve().parents[1]),
                      help="checkout whose segjax prepares the data")
  parser.add_argument("--small", action="store_true", help=argparse.SUPPRESS)  # the 8 x 8 child, internal
  args = parser.parse_args()
  repo = pathlib.Path(args.repo).resolve()
  if args.small:  # the 8 x 8 baseline, in a process of its own
    with tempfile.TemporaryDirectory() as tmp:
      _write(pathlib.Path(tmp), 8, args.rgb_mask)
      print(_child_peak(repo, pathlib.Path(tmp), args.rgb_mask))
    return
  small = int(subprocess.run([sys.executable, __file__, "--small", "--repo", str(repo)]
                             + ["--rgb_mask"] * args.rgb_mask, check=True, capture_output=True,
                             text=True).stdout.split()[-1])
  with tempfile.TemporaryDirectory() as tmp:
    start = time.perf_counter()
    nbytes = _write(pathlib.Path(tmp), args.size, args.rgb_mask)
    print(f"wrote {args.size}x{args.size} image + {'rgb' if args.rgb_mask else 'index'} mask in "
          f"{time.perf_counter() - start:.1f} s")
    peak = _child_peak(repo, pathlib.Path(tmp), args.rgb_mask)
  mib = 2 ** 20
  print(f"decoded image {nbytes / mib:.0f} MiB; peak RSS preparing it {peak / mib:.0f} MiB; "
        f"preparing an 8x8 pair {small / mib:.0f} MiB (imports); difference {(peak - small) / mib:.0f} MiB "
        f"= {(peak - small) / nbytes:.1f}x the decoded image")


if __name__ == "__main__":
  main()
