"""segjax-predict (and predict.py in a clone): segments image files.

segjax-predict --config=RECIPE --workdir=DIR --input=DIR_OR_FILE --output=DIR

Writes, per input image <stem>: <stem>.png (palette PNG whose pixel values are class ids, drawn in the dataset's
palette), <stem>_overlay.png, and with --probabilities <stem>_probs.npy (float16 [H, W, K], written while the
image streams through). When two inputs share a stem (x.png, x.jpg) their outputs take the whole file name
(x.png.png, x.jpg.png, ...). Nothing is written if an output would land on an input or on another output, or if
outputs exist already (unless --overwrite). The recipe's `inference` block picks the mode
(`--config.inference.mode=slide --config.inference.tile_size=512,512 ...`, docs/inference.md); `--member` adds
ensemble members. An unreadable image is reported and skipped; the others are still written, and the exit status
is 1 if any failed. --config takes a recipe file or the name of a recipe shipped with segjax.

Instance recipes write instance-id maps and COCO results instead (segjax.apps.predict_instance); panoptic recipes
write panoptic/<stem>.png (COCO panoptic RGB ids), overlays/<stem>.png and predictions.json
(segjax.apps.predict_panoptic).
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from segjax import cli, platform
from segjax import config as config_lib
from segjax.apps import predict, predict_instance, predict_panoptic

FLAGS = flags.FLAGS


def _define_flags() -> None:
  config_flags.DEFINE_config_file("config", None, "Recipe (file or shipped name) the run was trained with.",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "Training directory holding checkpoints/.")
  flags.DEFINE_string("input", None, "An image file, or a directory of them (not recursive).")
  flags.DEFINE_string("output", None, "Directory for the label maps, overlays and probabilities (created).")
  flags.DEFINE_integer("checkpoint_step", None, "Checkpoint step to restore (default: the latest).")
  flags.DEFINE_multi_string("member", [], "Another network to ensemble with, RECIPE:WORKDIR[:STEP] (repeatable).")
  flags.DEFINE_bool("overwrite", False, "Replace output files that exist already (inputs are never overwritten).")
  flags.DEFINE_bool("probabilities", False, "Also write <stem>_probs.npy, float16 [H, W, K] averaged scores.")
  flags.DEFINE_integer("max_pixels", 2**28, "Largest image (pixels) PIL may open; the default admits 16384 x 16384.")
  flags.mark_flags_as_required(["config", "workdir", "input", "output"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  platform.configure_xla_cpu()  # before any JAX computation
  members = [config_lib.parse_member(text) for text in FLAGS.member]  # bad values fail before anything runs
  # An instance recipe writes detections (instance-id PNGs, COCO results) instead of label maps; a panoptic one
  # segment maps and COCO panoptic results.
  runners = {"instance": predict_instance.run, "panoptic": predict_panoptic.run}
  runner = runners.get(FLAGS.config.task, predict.run)
  failed = runner(FLAGS.config, FLAGS.workdir, FLAGS.input, FLAGS.output, members=members,
                  checkpoint_step=FLAGS.checkpoint_step, probabilities=FLAGS.probabilities,
                  overwrite=FLAGS.overwrite, max_pixels=FLAGS.max_pixels)
  if failed:
    sys.exit(1)


def run() -> None:
  """The console script's entry point."""
  _define_flags()
  cli.run(main)
