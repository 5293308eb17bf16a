"""Segments image files: python predict.py --config=RECIPE --workdir=DIR --input=DIR_OR_FILE --output=DIR.

A thin wrapper, for a clone: the command is segjax/apps/predict_cli.py, installed as `segjax-predict`.
"""

from segjax.apps import predict_cli

if __name__ == "__main__":
  predict_cli.run()
