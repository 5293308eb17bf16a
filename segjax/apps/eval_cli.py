"""segjax-eval (and eval.py in a clone): evaluates a checkpoint.

segjax-eval --config=quickstart --workdir=DIR [--split=test] [--checkpoint_step=N] [--member=RECIPE:DIR[:STEP]]
            [--raw_params]

Inference mode and test-time augmentation come from the recipe's `inference` block
(`--config.inference.mode=slide --config.inference.hflip=True ...`); `--member` adds ensemble members. --config
(and a member's RECIPE) takes a recipe file or the name of a recipe shipped with segjax.
"""

from absl import app, flags
from ml_collections import config_flags

from segjax import cli, platform, sharding
from segjax import config as config_lib
from segjax.apps import eval as eval_app

FLAGS = flags.FLAGS


def _define_flags() -> None:
  config_flags.DEFINE_config_file("config", None, "Recipe (file or shipped name) the run was trained with.",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "Training directory holding checkpoints/.")
  flags.DEFINE_string("split", None, "Split to evaluate (default: the recipe's eval_split).")
  flags.DEFINE_integer("checkpoint_step", None, "Checkpoint step to restore (default: the latest).")
  flags.DEFINE_multi_string("member", [], "Another network to ensemble with, RECIPE:WORKDIR[:STEP] (repeatable); "
                            "the members' softmax probabilities are averaged.")
  flags.DEFINE_boolean("raw_params", False, "For a run trained with config.ema: evaluate the trained weights "
                       "instead of their moving average (written to DIR/eval/<split>_raw/).")
  flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  cli.configure_logging()  # segjax's INFO events; --verbosity honoured
  members = [config_lib.parse_member(text) for text in FLAGS.member]  # bad values fail before anything runs
  platform.configure_xla_cpu()  # XLA reads its flags when the backend starts: before any JAX computation
  sharding.initialize_distributed(FLAGS.config.distributed)
  eval_app.run_eval(FLAGS.config, FLAGS.workdir, split=FLAGS.split, checkpoint_step=FLAGS.checkpoint_step,
                    members=members, raw_params=FLAGS.raw_params)


def run() -> None:
  """The console script's entry point."""
  _define_flags()
  cli.run(main)
