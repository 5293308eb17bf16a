"""Exports a checkpoint: python export.py --config=configs/quickstart.py --workdir=DIR --out=exported/quickstart.

A thin wrapper, for a clone: the command is segjax/apps/export_cli.py, installed as `segjax-export`.
"""

from segjax.apps import export_cli

if __name__ == "__main__":
  export_cli.run()
