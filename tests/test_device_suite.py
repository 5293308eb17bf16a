"""bench/device_suite.py --smoke: the GPU suite's code, run on CPU at tiny sizes so it cannot rot between GPU runs."""

import json
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_device_suite_smoke(tmp_path):
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "OUT")}
  proc = subprocess.run([sys.executable, str(REPO / "bench" / "device_suite.py"), "--smoke", "--out", str(tmp_path)],
                        capture_output=True, text=True, env=env, cwd=REPO, timeout=600, check=False)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  data = json.loads((tmp_path / "device_suite.json").read_text())
  markdown = (tmp_path / "device_suite.md").read_text()
  # The one expected skip: DeepLabV3+ has no PyTorch twin (segjax-only on the device).
  assert data["smoke"] and data["skipped"] == [{"what": "DeepLabV3+: PyTorch",
                                                "reason": "no twin in bench/torch_models.py"}], data["skipped"]

  steps = [r for r in data["records"] if r["kind"] == "step"]
  assert not [r for r in steps if "error" in r], [r for r in steps if "error" in r]
  expected = {(m, "segjax", "jit", d) for m in ("U-Net", "SegNet", "FCN-8s", "DeepLabV3+")
              for d in ("bfloat16", "float32")}
  expected |= {(m, "pytorch", mode, d) for m in ("U-Net", "SegNet", "FCN-8s") for mode in ("eager", "channels_last")
               for d in ("bfloat16", "float32")}
  expected |= {("U-Net", "pytorch", "compile", d) for d in ("bfloat16", "float32")}
  assert {(r["model"], r["framework"], r["mode"], r["dtype"]) for r in steps} == expected
  for r in steps:
    assert r["step_s"] > 0 and abs(r["images_per_s"] - r["batch"] / r["step_s"]) < 1e-6 * r["images_per_s"], r
    assert r["loss"] == r["loss"] and r["loss"] > 0, r  # finite (not NaN) and positive cross-entropy
  for r in (r for r in steps if r["framework"] == "segjax"):
    assert r["flops"] > 0 and 0 < r["mfu"] < 1 and r["params"] > 0, r
    assert abs(r["achieved_tflops"] - r["flops"] / r["step_s"] / 1e12) < 1e-9 * r["achieved_tflops"], r

  # Mask R-CNN (bench/maskrcnn.py): segjax's train step and inference on the small backbone in the smoke run.
  detections = [r for r in data["records"] if r["kind"] == "detection"]
  assert {(r["framework"], r["mode"]) for r in detections} == {("segjax", "train"), ("segjax", "infer")}, detections
  assert all(r["step_s"] > 0 for r in detections) and "Mask R-CNN" in markdown

  profiled = [r for r in steps if r["framework"] == "segjax" and r["dtype"] == "bfloat16"]
  assert all(r["profile"]["top"] and r["profile"]["busy_ms_per_step"] > 0 for r in profiled), profiled
  assert "Where segjax's step goes" in markdown

  # Both sides build the same network: the same parameter count.
  for model in ("U-Net", "SegNet", "FCN-8s"):
    assert len({r["params"] for r in steps if r["model"] == model}) == 1, model

  # Every ratio is PyTorch's step time over segjax's, at the same batch, and is in the markdown table.
  by_key = {(r["model"], r["framework"], r["mode"], r["dtype"]): r for r in steps}
  assert len(data["ratios"]) == 14
  for q in data["ratios"]:
    ours, theirs = by_key[(q["model"], "segjax", "jit", q["dtype"])], by_key[(q["model"], "pytorch", q["mode"],
                                                                              q["dtype"])]
    assert abs(q["ratio"] - theirs["step_s"] / ours["step_s"]) < 1e-9 * q["ratio"]
    assert f"{q['ratio']:.2f}" in markdown

  pipeline = [r for r in data["records"] if r["kind"] == "pipeline"]
  assert pipeline and all(r["images_per_s"] > 0 for r in pipeline), pipeline
  for name in ("U-Net", "SegNet", "FCN-8s", "DeepLabV3+"):
    assert f"| {name} | 2 x 32x32 | bfloat16 |" in markdown
  assert "DeepLabV3+: PyTorch: no twin in bench/torch_models.py" in markdown
  assert "| 0 workers |" in markdown
