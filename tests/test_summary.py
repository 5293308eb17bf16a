"""segjax.summary: parameter counts against a brute-force count and published figures, FLOPs of a one-convolution
model against the closed form (XLA's convention asserted), and the command line on the quickstart recipe."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import linen as nn

from segjax import models, summary

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _OneConv(nn.Module):
  num_classes: int = 5
  kernel: int = 3
  padding: str = "SAME"
  use_bias: bool = False

  @nn.compact
  def __call__(self, x, *, train=False):
    return nn.Conv(self.num_classes, (self.kernel, self.kernel), padding=self.padding, use_bias=self.use_bias)(x)


def test_parameter_counts_match_brute_force_and_submodules():
  model = models.build_model("unet", 6, depth=2, base_features=8)
  s = summary.summarize(model, 16, 16)
  variables = jax.jit(lambda k: model.init({"params": k, "dropout": k}, np.zeros((1, 16, 16, 3)), train=False))(
      jax.random.key(0))
  flat = jax.tree_util.tree_flatten_with_path(variables["params"])[0]
  assert s["trainable"] == sum(np.asarray(leaf).size for _, leaf in flat)
  assert s["state"] == sum(np.asarray(leaf).size for leaf in jax.tree.leaves(variables["batch_stats"]))
  assert s["total"] == s["trainable"] + s["state"]
  by_top = {}
  for path, leaf in flat:
    by_top[path[0].key] = by_top.get(path[0].key, 0) + np.asarray(leaf).size
  assert s["by_submodule"] == by_top
  assert s["output"] == (1, 16, 16, 6)


def test_parameter_count_is_the_published_fcn8s_figure():
  # voc-fcn8s with fixed upsampling: 134,362,751 parameters (tests/models/test_fcn.py builds it from the layer table).
  s = summary.summarize(models.build_model("fcn8s", 21), 32, 32)
  assert s["trainable"] == 134_362_751 and s["state"] == 0


@pytest.mark.parametrize("use_bias", [False, True])
def test_one_convolution_flops_closed_form(use_bias):
  h, w, cin, cout, k, batch = 16, 24, 4, 5, 3, 2
  # VALID: every tap is real. XLA counts a multiply-add as 2 FLOPs, and the bias add as one FLOP per output.
  s = summary.summarize(_OneConv(cout, k, "VALID", use_bias), h, w, channels=cin, batch=batch)
  ho, wo = h - k + 1, w - k + 1
  assert s["output"] == (batch, ho, wo, cout)
  assert s["flops"] == 2 * ho * wo * cin * cout * k * k + (ho * wo * cout if use_bias else 0)
  assert s["macs"] == ho * wo * cin * cout * k * k  # fvcore/get_flops: multiply-adds of the convolution only
  assert s["trainable"] == k * k * cin * cout + (cout if use_bias else 0)
  # SAME: XLA does not count the taps that fall on the zero padding; the MAC count (as fvcore) does.
  s = summary.summarize(_OneConv(cout, k, "SAME", use_bias), h, w, channels=cin, batch=batch)
  taps = (k * h - 2 * (k // 2)) * (k * w - 2 * (k // 2))  # real taps, summed over output positions (k = 3)
  assert s["flops"] == 2 * taps * cin * cout + (h * w * cout if use_bias else 0)
  assert s["macs"] == h * w * cin * cout * k * k
  assert s["gflops"] == pytest.approx(s["flops"] / 1e9)


def test_dot_macs_counted():
  dense = nn.Dense(7)
  x = np.zeros((3, 11), np.float32)
  variables = dense.init(jax.random.key(0), x)
  assert summary.conv_mac_count(lambda v, x: dense.apply(v, x), variables, x) == 3 * 11 * 7


def test_cli_prints_the_summary_and_the_table():
  env = {**os.environ, "PYTHONPATH": ROOT}
  out = subprocess.run([sys.executable, "-m", "segjax.summary", "--config=configs/quickstart.py", "--height=32",
                        "--width=48"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=True)
  text = out.stdout
  model = models.build_model("unet", 6, depth=3, base_features=16)
  s = summary.summarize(model, 32, 48)
  assert "model: unet" in text
  assert f"{s['trainable']:,} trainable" in text
  assert "output: 1 x 32 x 48 x 6" in text
  assert "GFLOPs (XLA cost analysis, a multiply-add = 2 FLOPs" in text and "GMACs" in text
  for name in s["by_submodule"]:
    assert f"  {name} " in text
  # The table (--all, here restricted to two registry models to stay quick).
  out = subprocess.run([sys.executable, "-m", "segjax.summary", "--config=configs/quickstart.py", "--all",
                        "--models=fcn_nearest,segnet_basic", "--height=32", "--width=32"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120, check=True)
  lines = out.stdout.splitlines()
  assert summary.TABLE_HEADER in lines
  rows = lines[lines.index(summary.TABLE_HEADER) + 1:]
  assert [r.split()[0] for r in rows] == ["fcn_nearest", "segnet_basic"]
  for name, row in zip(("fcn_nearest", "segnet_basic"), rows):
    model = models.build_model(name, 6, **models.model_kwargs(models.model_config(name)))
    assert row == summary.format_row(name, summary.summarize(model, 32, 32))
  # A bad size is a one-line user error through segjax.cli.
  bad = subprocess.run([sys.executable, "-m", "segjax.summary", "--config=configs/quickstart.py", "--height=0",
                        "--width=-1"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert bad.returncode == 2 and "must be positive" in bad.stderr and "Traceback" not in bad.stderr

