"""Quickstart in mixed precision: the same U-Net, data and schedule, with bfloat16 compute.

python train.py --config=configs/quickstart_bf16.py --workdir=runs/quickstart_bf16
python eval.py --config=configs/quickstart_bf16.py --workdir=runs/quickstart_bf16 --split=test

Convolutions and activations are bfloat16; parameters, optimiser state, BatchNorm statistics, the output layer,
logits, loss and metrics stay float32. Any recipe switches the same way with `--config.model.dtype=bfloat16`.
It pays on TPUs and recent GPUs; XLA:CPU has no fast bfloat16 convolution, so on a CPU this recipe is slower than
float32 (BENCHMARKS.md, "Mixed precision").
"""

from segjax import config as config_lib


def get_config():
  # quickstart.py's values plus model.dtype; tests/training/test_mixed_precision.py checks that nothing else differs.
  c = config_lib.use_dataset(config_lib.default_config(), "shapes")
  c.model.depth = 3
  c.model.base_features = 16
  c.model.dtype = "bfloat16"
  return config_lib.finalize(c)
