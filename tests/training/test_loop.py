"""The training loop's own promises: evaluation during training compiles its step once per shape, and a resumed
run continues metrics.jsonl without repeating steps."""

import json
import logging

import jax

from segjax.training import logs, loop
from tests.conftest import tiny_config


def test_evaluation_during_training_compiles_once(shapes_data_dir, tmp_path, caplog):
  config = tiny_config(shapes_data_dir, num_train_steps=3, eval_every_steps=1, eval_split="validation[:8]",
                       checkpoint_every_steps=100, num_visualizations=0)
  jax.config.update("jax_log_compiles", True)
  try:
    with caplog.at_level(logging.WARNING):
      loop.train_and_evaluate(config, tmp_path, progress=False, devices=jax.devices()[:1])
  finally:
    jax.config.update("jax_log_compiles", False)
  compiles = [r for r in caplog.records if "Compiling jit(semantic_eval_step)" in r.getMessage()]
  evals = [r for r in logs.read_metrics(tmp_path) if "eval/mean_iou" in r]
  assert [r["step"] for r in evals] == [1, 2, 3]
  assert len(compiles) == 1, [r.getMessage()[:120] for r in compiles]


def test_metrics_writer_drops_the_records_a_killed_run_logged_past_its_checkpoint(tmp_path):
  path = tmp_path / "metrics.jsonl"
  lines = [json.dumps({"step": s, "loss": float(s)}) for s in range(1, 8)]
  lines.insert(5, json.dumps({"step": 5, "eval/mean_iou": 0.5}))
  path.write_text("\n".join(lines) + '\n{"step": 8, "lo')  # the last line cut short by the kill
  writer = logs.MetricsWriter(tmp_path)
  assert writer.drop_after(5) == 3  # steps 6 and 7, and the cut line
  # Moved aside, not deleted.
  assert (tmp_path / logs.DROPPED_FILE).read_text().splitlines() == [lines[6], lines[7], '{"step": 8, "lo']
  assert [(r["step"], "loss" in r) for r in logs.read_metrics(tmp_path)] == [
      (1, True), (2, True), (3, True), (4, True), (5, True), (5, False)]
  writer.write({"step": 6, "loss": 6.0})
  assert [r["step"] for r in logs.read_metrics(tmp_path)][-1] == 6
  assert writer.drop_after(6) == 0
  writer.tensorboard.close()
