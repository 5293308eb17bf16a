"""One large synthetic image through a small net with slide or overlap-tile inference: time, tiles/s, peak memory.

    python bench/large_image.py                                  # 16384 x 16384, slide, 512 tiles
    python bench/large_image.py --size 4096 --mode overlap_tile --tile 180
    python bench/large_image.py --size 8192 --tile_batch 16 --hflip

The net is a randomly initialised small U-Net (padded "unet" for slide, "unet_valid" for overlap_tile; --depth,
--features). The image is uniform noise, uint8 RGB, made before timing. Printed: wall time of
`Segmenter.predict_image` (the first call on a 256-pixel crop compiles the tile program first and is not
counted), windows per second, and the process's peak resident memory (`resource.getrusage`, which includes the
image, the labels and JAX's own buffers), beside the size of the image and of a full float32 score map.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))

from segjax import models  # noqa: E402  pylint: disable=wrong-import-position
from segjax.evaluation import inference  # noqa: E402  pylint: disable=wrong-import-position


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--size", type=int, default=16384, help="image side (square)")
  parser.add_argument("--mode", choices=("slide", "overlap_tile"), default="slide")
  parser.add_argument("--tile", type=int, default=512, help="slide: window side; overlap_tile: output tile side")
  parser.add_argument("--stride", type=int, default=None, help="slide stride (default 2/3 of the tile)")
  parser.add_argument("--tile_batch", type=int, default=8)
  parser.add_argument("--classes", type=int, default=4)
  parser.add_argument("--depth", type=int, default=2)
  parser.add_argument("--features", type=int, default=8)
  parser.add_argument("--weighting", choices=inference.WEIGHTINGS, default="mean")
  parser.add_argument("--hflip", action="store_true")
  args = parser.parse_args()

  if args.mode == "slide":
    model = models.build_model("unet", args.classes, depth=args.depth, base_features=args.features,
                               batch_norm=False)
  else:
    model = models.build_model("unet_valid", args.classes, depth=args.depth, base_features=args.features,
                               dropout_rate=0.0)
  side = models.init_size(model)
  variables = jax.jit(lambda key: model.init(key, jnp.zeros((1, side, side, 3)), train=False))(jax.random.key(0))
  stride = args.stride or -(-2 * args.tile // 3)
  params = inference.InferenceParams(mode=args.mode, tile_size=(args.tile, args.tile), stride=(stride, stride),
                                     weighting=args.weighting, hflip=args.hflip, tile_batch=args.tile_batch)
  member = inference.Member(model, variables, (127.5,) * 3, (64.0,) * 3)
  segmenter = inference.Segmenter([member], args.classes, params)

  image = np.random.RandomState(0).randint(0, 256, (args.size, args.size, 3), dtype=np.uint8)
  segmenter.predict_image(image[:256, :256])  # compiles the tile program
  windows = len(segmenter._windows(args.size, args.size))  # pylint: disable=protected-access
  start = time.perf_counter()
  labels = segmenter.predict_image(image)
  seconds = time.perf_counter() - start
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux
  mib = 2**20
  print(f"{args.mode} {args.size}x{args.size}, tile {args.tile}" + (f" stride {stride}" if args.mode == "slide"
        else f" (input {args.tile + 2 * model.input_margin})") + f", tile_batch {args.tile_batch}, "
        f"{args.classes} classes, depth {args.depth} x {args.features} features, devices {jax.devices()[0].platform}")
  print(f"wall {seconds:.1f} s, {windows} windows, {windows / seconds:.2f} windows/s, "
        f"{args.size**2 / seconds / 1e6:.2f} Mpixel/s")
  print(f"peak RSS {peak / mib:.0f} MiB (image {image.nbytes / mib:.0f} MiB, labels {labels.nbytes / mib:.0f} MiB; "
        f"a float32 score map would be {args.size**2 * args.classes * 4 / mib:.0f} MiB)")


if __name__ == "__main__":
  main()
