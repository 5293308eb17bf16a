"""Evaluates a checkpoint: python eval.py --config=configs/quickstart.py --workdir=DIR [--split=test].

A thin wrapper, for a clone: the command is segjax/apps/eval_cli.py, installed as `segjax-eval`.
"""

from segjax.apps import eval_cli

if __name__ == "__main__":
  eval_cli.run()
