"""Trains a segmentation model: python train.py --config=configs/quickstart.py --workdir=DIR [--config.k=v]."""

from absl import app, flags
from ml_collections import config_flags

from segjax import cli, platform, sharding
from segjax.training import loop

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Recipe file in configs/.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.jsonl; training resumes from it.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  cli.configure_logging()  # segjax's INFO events; --verbosity honoured
  platform.configure_xla_cpu()  # XLA reads its flags when the backend starts: before any JAX computation
  sharding.initialize_distributed(FLAGS.config.distributed)
  loop.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  cli.run(main)
