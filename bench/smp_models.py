"""Training-step time of segjax's DeepLabV3 / DeepLabV3+ / SMP U-Net / SMP FPN against the same networks in PyTorch
(torchvision's deeplabv3_resnet50 and segmentation_models_pytorch's DeepLabV3Plus, Unet, FPN) on this machine.

    python bench/smp_models.py                                  # batch 2, 224x224, 11 classes, 2 threads each side
    python bench/smp_models.py --models smp_unet_r34 --size 360 480 --batch 1

Both sides time one training step's gradient: forward in training mode (BatchNorm on batch statistics, dropout
on), softmax cross-entropy, backward; no optimiser update. segjax: `jax.grad` under jit (bench/models.py's
measure); PyTorch: eager `loss.backward()` with zeroed gradients, `torch.set_num_threads(--threads)`. Parameter
counts are printed for both (they must agree: tests/models/test_deeplabv3.py, test_smp.py). Median of --repeats
calls after one warm-up call (which compiles on the segjax side). The ratio is torch time / segjax time (> 1:
segjax faster).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo, for tests.conftest

from segjax import platform  # noqa: E402

platform.configure_xla_cpu()  # train.py's XLA:CPU flags, before JAX starts its CPU backend

import jax  # noqa: E402  pylint: disable=wrong-import-position
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from segjax import losses, models, summary  # noqa: E402
from segjax.ops import conv as conv_lib  # noqa: E402

import _timing  # noqa: E402  # bench/_timing.py

# name -> (segjax registry name, segjax keywords, torch builder)
CASES = {
    "deeplabv3_r50": ("deeplabv3", {}, lambda tv, smp, k: tv.models.segmentation.deeplabv3_resnet50(
        weights=None, weights_backbone=None, aux_loss=True, num_classes=k)),
    "deeplabv3plus_r50": ("deeplabv3plus", {"atrous_rates": (12, 24, 36)},
                          lambda tv, smp, k: smp.DeepLabV3Plus("resnet50", encoder_weights=None, classes=k)),
    "smp_unet_r18": ("smp_unet", {"encoder": "resnet18"},
                     lambda tv, smp, k: smp.Unet("resnet18", encoder_weights=None, classes=k)),
    "smp_unet_r34": ("smp_unet", {"encoder": "resnet34"},
                     lambda tv, smp, k: smp.Unet("resnet34", encoder_weights=None, classes=k)),
    "smp_fpn_r34": ("smp_fpn", {"encoder": "resnet34"},
                    lambda tv, smp, k: smp.FPN("resnet34", encoder_weights=None, classes=k)),
}


def segjax_step(name: str, kwargs: dict, batch: int, size, classes: int, repeats: int, backend: str):
  model = models.build_model(name, classes, **kwargs)
  h, w = summary.accepted_size(model, size)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((batch, h, w, 3)), jnp.float32)
  with jax.threefry_partitionable(False):
    variables = jax.jit(lambda k: model.init({"params": k, "dropout": k}, x, train=False))(jax.random.key(0))
  params, state = variables["params"], {k: v for k, v in variables.items() if k != "params"}
  labels = jnp.asarray(rng.integers(0, classes, (batch, h, w)), jnp.int32)
  weights = jnp.ones(labels.shape, jnp.float32)

  def loss_fn(p, x):
    logits, _ = model.apply({"params": p, **state}, x, train=True, rngs={"dropout": jax.random.key(1)},
                            mutable=["batch_stats", "aux"])
    return losses.cross_entropy(logits, labels, weights)

  def traced(p, x):
    with conv_lib.backend(backend):
      return jax.grad(loss_fn)(p, x)

  ms = _timing.median_ms(jax.jit(traced), params, x, repeats=repeats)
  return ms, summary.count_params(params), (h, w)


def torch_step(build, batch: int, hw, classes: int, repeats: int) -> tuple[float, int]:
  import time  # pylint: disable=import-outside-toplevel

  import torch  # pylint: disable=import-outside-toplevel
  from tests.conftest import import_torchvision  # pylint: disable=import-outside-toplevel

  tv = import_torchvision()
  import segmentation_models_pytorch as smp  # pylint: disable=import-outside-toplevel

  net = build(tv, smp, classes).train()
  rng = np.random.default_rng(0)
  x = torch.from_numpy(rng.standard_normal((batch, 3, *hw)).astype(np.float32))
  y = torch.from_numpy(rng.integers(0, classes, (batch, *hw)).astype(np.int64))

  def step():
    net.zero_grad(set_to_none=True)
    out = net(x)
    out = out["out"] if isinstance(out, dict) else out  # torchvision's segmentation models return a dict
    torch.nn.functional.cross_entropy(out, y).backward()

  step()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
  return 1e3 * float(np.median(times)), sum(p.numel() for p in net.parameters())


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", nargs="*", default=list(CASES), choices=list(CASES))
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--size", type=int, nargs=2, default=(224, 224))
  parser.add_argument("--classes", type=int, default=11)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--threads", type=int, default=os.cpu_count())
  parser.add_argument("--conv-backend", default="auto", choices=["auto", "xla", "onednn"])
  args = parser.parse_args()
  import torch  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(args.threads)
  backend = conv_lib.resolve_backend(args.conv_backend, jax.device_count())
  print(f"jax {jax.__version__} ({jax.default_backend()}, convolutions: {backend}), torch {torch.__version__} "
        f"({args.threads} threads); batch {args.batch}, {args.size[0]}x{args.size[1]}, {args.classes} classes")
  print(f"{'model':<20}{'input':>10}{'params segjax':>15}{'params torch':>14}{'segjax ms':>11}{'torch ms':>10}"
        f"{'torch/segjax':>14}")
  for case in args.models:
    name, kwargs, build = CASES[case]
    ms, n, hw = segjax_step(name, kwargs, args.batch, tuple(args.size), args.classes, args.repeats, backend)
    tms, tn = torch_step(build, args.batch, hw, args.classes, args.repeats)
    print(f"{case:<20}{f'{hw[0]}x{hw[1]}':>10}{n:>15,}{tn:>14,}{ms:>11.0f}{tms:>10.0f}{tms / ms:>14.2f}", flush=True)


if __name__ == "__main__":
  main()
