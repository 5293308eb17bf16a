"""Trains a segmentation model: python train.py --config=configs/quickstart.py --workdir=DIR [--config.k=v].

A thin wrapper, for a clone: the command is segjax/apps/train_cli.py, installed as `segjax-train`.
"""

from segjax.apps import train_cli

if __name__ == "__main__":
  train_cli.run()
