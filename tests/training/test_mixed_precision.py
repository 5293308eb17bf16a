"""Mixed precision (`config.model.dtype = "bfloat16"`): bfloat16 convolutions, float32 wherever values accumulate.

The contract: parameters, optimiser state and BatchNorm statistics are float32 before and after a train step;
logits and the loss are float32; the step's convolutions run in bfloat16 and no long sum does; one bf16 step's
loss and gradients stay within stated tolerances of an independent float32 computation; and a shortened
quickstart trained in bf16 reaches the float32 run's test mIoU within a stated margin.
"""

import contextlib
import dataclasses
import io
import re
from typing import Any

import chex
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax import losses
from segjax.apps import eval as eval_app
from segjax.data import datasets, pipeline
from segjax.models import unet
from segjax import experiment
from segjax.training import loop, steps
from tests.conftest import REPO, semantic_train_dataset, tiny_config
from tests.test_configs import load

# Tolerances of one bf16 step against float32 on the tiny U-Net (depth 2, base 4, 8 x 32 x 32 crops). Measured:
# loss 6e-5 relative, whole gradient 3.0% relative, output layers' gradients <= 2.6%, BatchNorm statistics 3e-4
# absolute. Deeper layers' gradients differ by up to ~25% at initialisation: BatchNorm's backward pass keeps a
# small residual of a bf16-rounded gradient, whose rounding error is then relatively large (on any backend).
LOSS_RTOL = 2e-3
GRAD_RTOL = 0.06
OUTPUT_GRAD_RTOL = 0.08
OUTPUT_LAYER_PARAMS = ("classifier/kernel", "classifier/bias", "upconv0/bias")
BATCH_STATS_ATOL = 2e-3

# The quality test: the quickstart shortened to 1000 steps of 16 crops of 32x32 for a U-Net of depth 2, base 16,
# with the Dice loss alone (in short schedules it raises mIoU fastest). Measured (2-core CPU): test split, seed 0:
# float32 0.7775, bfloat16 0.7683 (~4 min for both runs on the shared CPU); validation split, seeds 0 / 1 / 2:
# float32 0.778 / 0.768 / 0.755, bfloat16 0.775 / 0.715 / 0.769. Shorter schedules end on the steep part of the
# learning curve, where runs differing only in rounding ended up to 0.15 apart (500 steps, seed 1: 0.580 vs
# 0.432); here the largest gap was 0.053, hence the margin. The full recipe ends 0.0004 apart (BENCHMARKS.md).
QUALITY_SCHEDULE = {"num_train_steps": 1000, "batch_size": 16, "dataset.crop_size": (32, 32), "model.depth": 2,
                    "model.base_features": 16, "loss.ce_weight": 0.0, "loss.dice_weight": 1.0,
                    "optimizer.name": "adam", "optimizer.learning_rate": 3e-3, "eval_batch_size": 50,
                    "log_every_steps": 250, "checkpoint_every_steps": 1000, "num_visualizations": 0}
MIOU_FLOOR = 0.65
MIOU_MARGIN = 0.06


def _config(data_dir, dtype, **overrides):
  # No flips, so an independent reference sees the same pixels; no warm-up, so the first step moves parameters.
  overrides = {"model.dtype": dtype, "augment.hflip_prob": 0.0, "optimizer.warmup_steps": 0, "mesh.data": 1,
               **overrides}
  return tiny_config(data_dir, **overrides)


def _first_batch(config, spec):
  source = datasets.data_source(config.dataset, "train")
  return semantic_train_dataset(source, spec=spec, batch_size=config.batch_size,
                                crop_size=config.dataset.crop_size, seed=config.seed)[0]


def _train_step(exp):
  return steps.jit_train_step(exp)


def _float_leaves(tree):
  return [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]


def _assert_state_float32(state):
  n_params = len(jax.tree.leaves(state.params))
  for part, expected_count in (("params", n_params), ("opt_state", 2 * n_params), ("batch_stats", None)):
    leaves = _float_leaves(getattr(state, part))
    assert {str(x.dtype) for x in leaves} == {"float32"}, part
    if expected_count is not None:  # adam(w): a float32 first and second moment per parameter
      assert len(leaves) == expected_count, part
  assert _float_leaves(state.batch_stats)


def _model_input(batch, exp):
  return exp.forward.normalize(jnp.asarray(batch["image"]))


def _reference_loss(logits, labels, weights, ce_weight, dice_weight, smooth=1.0):
  """Weighted-mean cross-entropy + batch soft Dice, as segjax.losses documents them, in float64 numpy."""
  z = np.asarray(logits, np.float64)
  z = z - z.max(-1, keepdims=True)
  log_p = z - np.log(np.exp(z).sum(-1, keepdims=True))
  onehot = np.eye(z.shape[-1])[labels]
  w = np.asarray(weights, np.float64)[..., None]
  ce = -(w * onehot * log_p).sum() / w.sum()
  p = np.exp(log_p) * w
  g = onehot * w
  dice = (2 * (p * g).sum((0, 1, 2)) + smooth) / (p.sum((0, 1, 2)) + g.sum((0, 1, 2)) + smooth)
  return ce_weight * ce + dice_weight * (1 - dice.mean())


def _gradients(exp, state, batch):
  """d(loss)/d(params) of a training-mode forward pass, as the train step computes it (no augmentation)."""
  c = exp.config
  x = _model_input(batch, exp)

  def loss_fn(params):
    logits, _ = exp.model.apply({"params": params, "batch_stats": state.batch_stats}, x, train=True,
                                mutable=["batch_stats"])
    return losses.segmentation_loss(logits, batch["label"], batch["weight"], ce_weight=c.loss.ce_weight,
                                    dice_weight=c.loss.dice_weight)

  return jax.device_get(jax.jit(jax.grad(loss_fn))(state.params))


def test_bf16_recipe_is_quickstart_with_bf16_compute():
  quick, bf16 = load(REPO / "configs" / "quickstart.py"), load(REPO / "configs" / "quickstart_bf16.py")
  assert (quick.model.dtype, bf16.model.dtype) == ("float32", "bfloat16")
  a, b = quick.to_dict(), bf16.to_dict()
  a["model"].pop("dtype"), b["model"].pop("dtype")
  assert a == b


@dataclasses.dataclass
class Run:
  """One train step of the tiny recipe from its initial state, in one compute dtype (host copies)."""
  exp: experiment.Experiment
  init: Any  # TrainState before the step
  stepped: Any  # TrainState after it
  out: dict[str, np.ndarray]  # the step's metrics
  grads: dict[str, np.ndarray]  # parameter path -> d(loss)/d(parameter) at `init`
  hlo: str  # the lowered train step (StableHLO text)


@pytest.fixture(scope="module")
def runs(shapes_data_dir) -> dict[str, Any]:
  """A Run per dtype on the same first batch (under "batch"), shared so that each program compiles once."""
  result = {}
  for dtype in ("float32", "bfloat16"):
    # XLA's convolutions, whose dtypes the lowered program shows (oneDNN's are opaque custom calls).
    exp = experiment.build(_config(shapes_data_dir, dtype, conv_backend="xla"))
    state = exp.init_state()
    batch = _first_batch(exp.config, exp.spec)
    global_batch = pipeline.to_global(batch, exp.mesh)
    step = _train_step(exp)
    hlo = step.lower(state, global_batch).as_text()
    grads = flax.traverse_util.flatten_dict(_gradients(exp, state, batch), sep="/")
    init = jax.device_get(state)
    stepped, out = step(state, global_batch)  # donates `state`
    result[dtype] = Run(exp, init, jax.device_get(stepped), jax.device_get(out), grads, hlo)
  result["batch"] = batch
  return result


def test_state_is_float32_before_and_after_a_bf16_step(runs):
  run = runs["bfloat16"]
  assert run.exp.model.dtype == jnp.bfloat16
  _assert_state_float32(run.init)
  # The compute dtype does not enter initialisation: the same float32 parameters as the float32 recipe.
  chex.assert_trees_all_equal(run.init.params, runs["float32"].init.params)
  assert bool(run.out["finite"])
  _assert_state_float32(run.stepped)
  for part in ("params", "batch_stats"):  # the step was applied, in float32
    old, new = jax.tree.leaves(getattr(run.init, part)), jax.tree.leaves(getattr(run.stepped, part))
    assert all(not np.array_equal(o, n) for o, n in zip(old, new)), part


def test_bf16_activations_float32_logits_and_loss(runs):
  run = runs["bfloat16"]
  variables = {"params": run.init.params, "batch_stats": run.init.batch_stats}
  apply = jax.jit(lambda v, x: run.exp.model.apply(v, x, train=False, capture_intermediates=True,
                                                   mutable=["intermediates"]))
  logits, captured = apply(variables, _model_input(runs["batch"], run.exp))
  outputs = flax.traverse_util.flatten_dict(captured["intermediates"], sep="/")
  assert outputs["down0/__call__"][0].dtype == jnp.bfloat16  # a conv block's activations
  assert outputs["upconv0/__call__"][0].dtype == jnp.bfloat16
  assert outputs["classifier/__call__"][0].dtype == jnp.float32  # the output layer runs in float32
  assert logits.dtype == jnp.float32
  assert run.out["loss"].dtype == np.float32 and run.out["grad_norm"].dtype == np.float32


def _hlo_ops(text, op):
  """(operand types, result types, line) of every `stablehlo.<op>` in lowered StableHLO text."""
  found = []
  for line in text.splitlines():
    if re.search(rf"stablehlo\.{op}[(\s]", line):
      match = re.search(r": \((.*)\) -> (.*)$", line)  # the one-line form: `: (operands) -> result(s)`
      assert match, f"no type signature on the line of {op}: {line}"
      found.append((re.findall(r"tensor<[^>]*>", match.group(1)), match.group(2), line))
  return found


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_train_step_convolutions_run_in_the_compute_dtype(runs, dtype):
  run = runs[dtype]
  short = {"float32": "f32", "bfloat16": "bf16"}[dtype]
  n_3x3 = sum(1 for k in jax.tree.leaves(run.init.params) if k.ndim == 4 and k.shape[:2] == (3, 3))
  convs = _hlo_ops(run.hlo, "convolution")
  in_dtype = [c for c in convs if all(t.endswith(f"x{short}>") for t in c[0]) and c[1].endswith(f"x{short}>")]
  # Forward, input gradient and kernel gradient of every 3x3 convolution (the first needs no input gradient).
  assert len(in_dtype) >= 3 * n_3x3 - 1, [c[2] for c in convs]
  # Everything else is the float32 1x1 classifier: forward, input and kernel gradient.
  others = [c for c in convs if c not in in_dtype]
  assert len(others) <= 3 and all("x6xf32>" in c[2] and "1x1x" in c[2] for c in others), [c[2] for c in others]
  # The up-convolutions' matmuls too (forward and two gradients per up-convolution).
  dots = [d for d in _hlo_ops(run.hlo, "dot_general") if all(t.endswith(f"x{short}>") for t in d[0])]
  assert len(dots) >= 3 * run.exp.config.model.depth
  # No long sum in bfloat16: an add-reduction may run in bf16 only over a 2x2 pooling window (its gradient).
  for operands, _, line in _hlo_ops(run.hlo, "reduce"):
    if operands[0].endswith("xbf16>") and "applies stablehlo.add" in line:
      shape = [int(d) for d in operands[0][len("tensor<"):].split("x")[:-1]]
      dims = [int(d) for d in re.search(r"dimensions = \[([\d, ]*)\]", line).group(1).split(",")]
      assert np.prod([shape[d] for d in dims]) <= 4, line


def test_one_bf16_step_matches_float32(runs):
  run32, run16 = runs["float32"], runs["bfloat16"]
  batch, config = runs["batch"], run32.exp.config
  # Independent reference: float32 logits of the same parameters, loss in float64 numpy.
  logits, _ = jax.jit(lambda v, x: run32.exp.model.apply(v, x, train=True, mutable=["batch_stats"]))(
      {"params": run32.init.params, "batch_stats": run32.init.batch_stats}, _model_input(batch, run32.exp))
  reference = _reference_loss(logits, batch["label"], batch["weight"], config.loss.ce_weight,
                              config.loss.dice_weight)
  loss32, loss16 = run32.out["loss"], run16.out["loss"]
  g32, g16 = run32.grads, run16.grads
  grad_error = np.sqrt(sum(np.sum((g16[k] - g32[k]) ** 2) for k in g32)) / run32.out["grad_norm"]
  output_errors = {k: np.linalg.norm(g16[k] - g32[k]) / np.linalg.norm(g32[k]) for k in OUTPUT_LAYER_PARAMS}
  stats_error = max(np.abs(a - b).max() for a, b in zip(jax.tree.leaves(run32.stepped.batch_stats),
                                                        jax.tree.leaves(run16.stepped.batch_stats)))
  print(f"bf16 vs float32, one step: loss {abs(loss16 - reference) / reference:.2e} relative, gradient "
        f"{grad_error:.4f} relative, output layers {({k: round(float(v), 4) for k, v in output_errors.items()})}, "
        f"BatchNorm statistics {stats_error:.2e} absolute")

  np.testing.assert_allclose(loss32, reference, rtol=1e-5)  # the reference is the float32 step's loss
  np.testing.assert_allclose(loss16, reference, rtol=LOSS_RTOL)
  assert loss16 != loss32  # bf16 did change the arithmetic
  # The gradients above are the step's (up to bf16 rounding where XLA fuses the two programs differently).
  np.testing.assert_allclose(run16.out["grad_norm"], np.sqrt(sum(np.vdot(g, g) for g in g16.values())), rtol=1e-2)
  assert grad_error < GRAD_RTOL
  # The output layers' gradients are sums over every pixel of the batch: accumulated in bf16 they would be far
  # off (96% on the classifier's bias, 130% on upconv0's, before segjax.models.unet.add_bias).
  for name, error in output_errors.items():
    assert error < OUTPUT_GRAD_RTOL, (name, error)
  # BatchNorm statistics: float32 (checked above), updated from bf16 activations, close to the float32 run's.
  assert stats_error < BATCH_STATS_ATOL


def test_add_bias_sums_its_gradient_in_float32():
  rng = np.random.default_rng(0)
  y = jnp.asarray(rng.standard_normal((8, 64, 64, 3)), jnp.bfloat16)
  upstream = rng.uniform(0.0, 1e-3, y.shape)  # a loss gradient: many small terms of one sign
  bias = jnp.zeros(3, jnp.float32)
  grad = jax.jit(jax.grad(lambda b: jnp.vdot(unet.add_bias(y, b).astype(jnp.float32),
                                             jnp.asarray(upstream, jnp.bfloat16).astype(jnp.float32))))(bias)
  reference = np.asarray(upstream, np.float64).sum((0, 1, 2))
  np.testing.assert_allclose(grad, reference, rtol=1e-2)  # bf16 inputs (2^-9), float32 sum
  out = unet.add_bias(y, jnp.asarray([0.5, -1.0, 2.0]))
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(y, np.float32) + [0.5, -1.0, 2.0], rtol=1e-2,
                             atol=1e-2)


@pytest.mark.slow
def test_bf16_training_reaches_float32_quality(shapes_data_dir, tmp_path):
  """The quickstart shortened (QUALITY_SCHEDULE), trained from the same seed in both dtypes, test split."""
  results = {}
  for dtype in ("float32", "bfloat16"):
    config = tiny_config(shapes_data_dir, **{**QUALITY_SCHEDULE, "model.dtype": dtype, "mesh.data": 1})
    loop.train_and_evaluate(config, tmp_path / dtype, progress=False)
    with contextlib.redirect_stdout(io.StringIO()):  # run_eval prints its table
      results[dtype] = eval_app.run_eval(config, str(tmp_path / dtype), split="test")
  miou = {dtype: r["mean_iou"] for dtype, r in results.items()}
  print(f"test mIoU: float32 {miou['float32']:.4f}, bfloat16 {miou['bfloat16']:.4f}")
  assert min(miou.values()) > MIOU_FLOOR, miou
  assert abs(miou["bfloat16"] - miou["float32"]) <= MIOU_MARGIN, miou
