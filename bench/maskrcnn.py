"""Mask R-CNN (ResNet-50-FPN) in segjax against torchvision's, on the same images and batch, on this machine.

    python bench/maskrcnn.py --torch-python=/path/to/venv/bin/python      # batch 2, 320x320, 91 classes
    python bench/maskrcnn.py --size 512 --batch 1 --repeats 5

Both models are torchvision's 1x COCO configuration: ResNet-50 with frozen BatchNorm, stem and layer1 frozen
(trainable_backbone_layers=3), FPN, 2000/2000 proposals in training and 1000/1000 in inference, 512 sampled RoIs,
100 detections; SGD with momentum 0.9 and weight decay 1e-4. Images are instance_shapes examples resized to the
benchmark size (torchvision's transform is set to that size, so it does not resize again), with their boxes and
masks as targets. Timed: one training step (forward, the five losses, backward, the update) and inference
(images per second), the median of `--repeats` calls after a warm-up call.

torchvision runs in a separate Python (`--torch-python`): its detection operators (nms, roi_align) need a
torchvision built for the installed torch, which segjax's test environment does not have (PyPI's torchvision
is a CUDA build, see tests/conftest.py); any venv with matching torch and torchvision works
(`pip install torch==2.14.1 torchvision==0.29.1`). The ratio is torchvision's time over segjax's: > 1 means
segjax is faster.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent


def make_batch(batch: int, size: int, max_instances: int = 8) -> dict[str, np.ndarray]:
  from segjax.data.instance import features, pipeline, shapes  # pylint: disable=import-outside-toplevel
  rows = []
  for i in range(batch):
    raw = shapes.generate_example("train", i + 1)
    n = len(raw["classes"])
    inst = features.Instances(image=raw["image"], boxes=raw["boxes"], classes=raw["classes"], masks=raw["masks"],
                              crowd=np.zeros(n, bool), image_id=i, filename=str(i))
    rows.append(pipeline.to_fields(inst, (size, size), max_instances))
  return {k: np.stack([r[k] for r in rows]) for k in ("image", "boxes", "classes", "masks", "valid")}


def bench_jax(data: dict[str, np.ndarray], repeats: int, classes: int, dtype: str = "float32",
              backbone: str = "resnet50") -> dict[str, float]:
  from segjax import platform  # pylint: disable=import-outside-toplevel
  platform.configure_xla_cpu()
  import functools  # pylint: disable=import-outside-toplevel
  import types  # pylint: disable=import-outside-toplevel

  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel

  from segjax import state as state_lib  # pylint: disable=import-outside-toplevel
  from segjax.models.detection import mask_rcnn  # pylint: disable=import-outside-toplevel
  from segjax.ops import conv as conv_lib  # pylint: disable=import-outside-toplevel

  sys.path.insert(0, str(HERE))
  import _timing  # pylint: disable=import-outside-toplevel

  backend = conv_lib.resolve_backend("auto", 1)
  model = mask_rcnn.MaskRCNN(num_classes=classes - 1, backbone=backbone, frozen_bn=True, trainable_layers=3,
                             dtype=jnp.bfloat16 if dtype == "bfloat16" else jnp.float32)
  mean = jnp.asarray((123.675, 116.28, 103.53))
  std = jnp.asarray((58.395, 57.12, 57.375))
  images = (jnp.asarray(data["image"], jnp.float32) - mean) / std
  targets = {k: jnp.asarray(data[k]) for k in ("boxes", "classes", "masks", "valid")}
  with conv_lib.backend(backend), jax.threefry_partitionable(False):
    variables = jax.jit(lambda k: model.init({"params": k, "dropout": k}, images[:1, :64, :64], train=False))(
        jax.random.key(0))
  opt = types.SimpleNamespace(name="sgd", learning_rate=0.02, schedule="constant", warmup_steps=0,
                              weight_decay=1e-4, momentum=0.9, poly_power=0.9, grad_clip_norm=0.0)
  tx = state_lib.make_optimizer(opt, optax.constant_schedule(0.02),
                                trainable=functools.partial(mask_rcnn.trainable_mask, frozen_bn=True,
                                                            trainable_layers=3))
  params, rest = variables["params"], {k: v for k, v in variables.items() if k != "params"}
  opt_state = tx.init(params)

  def train_step(params, opt_state, key):
    def loss_fn(p):
      out = model.apply({"params": p, **rest}, images, train=True, targets=targets, rngs={"sampling": key})
      return sum(v for k, v in out.items() if k.startswith("loss_"))
    with conv_lib.backend(backend):
      loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  def infer(params):
    with conv_lib.backend(backend):
      return model.apply({"params": params, **rest}, images, train=False)

  step = jax.jit(train_step)
  start = time.perf_counter()
  jax.block_until_ready(step(params, opt_state, jax.random.key(1)))
  compile_s = time.perf_counter() - start
  train_s = _timing.median_seconds(step, params, opt_state, jax.random.key(1), repeats=repeats)
  infer_s = _timing.median_seconds(jax.jit(infer), params, repeats=repeats)
  return {"train_s": train_s, "infer_s": infer_s, "first_train_call_s": compile_s, "backend": backend,
          "device": jax.devices()[0].device_kind, "jax": jax.__version__}


TORCH_SIDE = r'''
import json, sys, time
import numpy as np, torch
from torchvision.models import resnet50
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops import FrozenBatchNorm2d
data = dict(np.load(sys.argv[1])); repeats, classes, threads = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
bf16 = sys.argv[5] == "bfloat16"
torch.set_num_threads(threads); torch.manual_seed(0)
dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
size = data["image"].shape[1]
backbone = _resnet_fpn_extractor(resnet50(norm_layer=FrozenBatchNorm2d), 3)
model = MaskRCNN(backbone, num_classes=classes, min_size=size, max_size=size).to(dev)
images = [torch.from_numpy(im).permute(2, 0, 1).float().to(dev) / 255 for im in data["image"]]
targets = []
for i in range(len(images)):
    keep = data["valid"][i] > 0
    targets.append({"boxes": torch.from_numpy(data["boxes"][i][keep]).to(dev),
                    "labels": torch.from_numpy(data["classes"][i][keep]).long().to(dev),
                    "masks": torch.from_numpy(data["masks"][i][keep]).to(dev)})
autocast = lambda: torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16)
opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.02, momentum=0.9, weight_decay=1e-4)
def train():
    model.train()
    with autocast(): losses = model(images, targets)
    loss = sum(losses.values()); opt.zero_grad(); loss.backward(); opt.step()
def infer():
    model.eval()
    with torch.no_grad(), autocast(): model(images)
def median(fn):
    fn(); sync(); times = []
    for _ in range(repeats):
        t = time.perf_counter(); fn(); sync(); times.append(time.perf_counter() - t)
    return float(np.median(times))
print(json.dumps({"train_s": median(train), "infer_s": median(infer), "torch": torch.__version__, "device": str(dev)}))
'''


def bench_torch(data, repeats: int, classes: int, python: str, threads: int, dtype: str = "float32"
                ) -> dict[str, float]:
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "batch.npz")
    np.savez(path, **data)
    out = subprocess.run([python, "-c", TORCH_SIDE, path, str(repeats), str(classes), str(threads), dtype],
                         capture_output=True, text=True, check=False)
  if out.returncode:
    raise RuntimeError(f"the torchvision side failed ({python}):\n{out.stderr[-3000:]}")
  return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--size", type=int, default=320, help="image side (a multiple of 32)")
  parser.add_argument("--classes", type=int, default=91, help="torchvision's num_classes (background included)")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                      help="compute dtype (segjax: the model's dtype; torch: autocast)")
  parser.add_argument("--backbone", default="resnet50", choices=["resnet50", "small"],
                      help="small: segjax's CPU backbone, segjax only (the device suite's smoke run)")
  parser.add_argument("--torch-python", default=sys.executable, help="a Python with torch + matching torchvision")
  parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
  parser.add_argument("--jax-only", action="store_true", help="segjax alone (no torchvision at hand)")
  parser.add_argument("--result-lines", action="store_true", help="also print RESULT {json} lines "
                      "(bench/device_suite.py reads them)")
  args = parser.parse_args(argv)
  data = make_batch(args.batch, args.size)
  print(f"Mask R-CNN {args.backbone}-FPN, batch {args.batch} x {args.size}x{args.size}, {args.classes} classes, "
        f"{args.dtype}, {os.cpu_count()} CPU cores; median of {args.repeats}", flush=True)
  theirs = None
  if not args.jax_only and args.backbone == "resnet50":
    theirs = bench_torch(data, args.repeats, args.classes, args.torch_python, args.threads, args.dtype)
  ours = bench_jax(data, args.repeats, args.classes, args.dtype, args.backbone)
  if args.result_lines:
    for framework, got in (("segjax", ours), ("torchvision", theirs)):
      for mode in ("train", "infer") if got else ():
        print("RESULT " + json.dumps({
            "kind": "detection", "model": f"Mask R-CNN {args.backbone}-FPN", "framework": framework, "mode": mode,
            "dtype": args.dtype, "batch": args.batch, "size": [args.size, args.size], "step_s": got[f"{mode}_s"],
            "images_per_s": args.batch / got[f"{mode}_s"], "device": got.get("device")}), flush=True)
  print(f"{'':24}{'segjax':>12}{'torchvision':>14}{'ratio (tv/segjax)':>20}")
  for key, name in (("train_s", "train step (s)"), ("infer_s", "inference (s)")):
    tv = f"{theirs[key]:14.3f}{theirs[key] / ours[key]:20.2f}" if theirs else f"{'-':>14}{'-':>20}"
    print(f"{name:24}{ours[key]:12.3f}{tv}")
  for key, name in (("train_s", "train images/s"), ("infer_s", "inference images/s")):
    tv = f"{args.batch / theirs[key]:14.2f}" if theirs else f"{'-':>14}"
    print(f"{name:24}{args.batch / ours[key]:12.2f}{tv}")
  print(f"segjax: first train call (compile) {ours['first_train_call_s']:.1f} s, convolutions on {ours['backend']}, "
        f"{ours['device']}" + (f"; torch {theirs['torch']} on {theirs['device']} ({args.threads} threads)"
                               if theirs else ""))


if __name__ == "__main__":
  main()
