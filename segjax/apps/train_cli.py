"""segjax-train (and train.py in a clone): trains a segmentation model.

segjax-train --config=quickstart --workdir=DIR [--config.<key>=<value> ...]

--config takes a recipe file (configs/quickstart.py) or the name of a recipe shipped with segjax (quickstart).
Flags are defined when `run` starts, not at import, so that the four command modules import side by side.
"""

from absl import app, flags
from ml_collections import config_flags

from segjax import cli, platform, sharding
from segjax.training import loop

FLAGS = flags.FLAGS


def _define_flags() -> None:
  config_flags.DEFINE_config_file("config", None, "Recipe: a file (configs/<name>.py) or a shipped recipe's name.",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.jsonl; training resumes from it.")
  flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  cli.configure_logging()  # segjax's INFO events; --verbosity honoured
  platform.configure_xla_cpu()  # XLA reads its flags when the backend starts: before any JAX computation
  sharding.initialize_distributed(FLAGS.config.distributed)
  loop.train_and_evaluate(FLAGS.config, FLAGS.workdir)


def run() -> None:
  """The console script's entry point."""
  _define_flags()
  cli.run(main)
