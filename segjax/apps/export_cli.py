"""segjax-export (and export.py in a clone): exports a checkpoint.

segjax-export --config=quickstart --workdir=DIR --out=exported/quickstart

Writes OUT/model.jaxexport (StableHLO, jax.export) and OUT/model.json, which `segjax.serving.load` runs with numpy
and jax only (docs/export.md); `--format=saved_model` writes a TensorFlow SavedModel instead. --config takes a
recipe file or the name of a recipe shipped with segjax.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from segjax import cli
from segjax.serving import export, serving

FLAGS = flags.FLAGS


def _define_flags() -> None:
  config_flags.DEFINE_config_file("config", None, "Recipe (file or shipped name) the run was trained with.",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "Training directory holding checkpoints/.")
  flags.DEFINE_string("out", None, "Directory to write model.jaxexport and model.json (or the SavedModel) to.")
  flags.DEFINE_integer("step", None, "Checkpoint step to export (default: the latest).")
  flags.DEFINE_integer("height", None, "Export this image height only (default: any multiple of the model's size "
                       "divisor; required for valid-convolution nets).")
  flags.DEFINE_integer("width", None, "Export this image width only (as --height).")
  flags.DEFINE_string("batch", "b", "A name: any batch size; an integer: that batch size only.")
  flags.DEFINE_list("platforms", ["cpu"], "Platforms the artifact runs on: cpu, cuda, rocm, tpu (comma-separated).")
  flags.DEFINE_list("outputs", ["labels", "probs"], "Outputs: labels, probs, logits (comma-separated).")
  flags.DEFINE_enum("format", "jax", ["jax", "saved_model"], "jax: jax.export (needs only jax to run); "
                    "saved_model: a TensorFlow SavedModel (needs segjax[tf]).")
  flags.mark_flags_as_required(["config", "workdir", "out"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # orbax logs every step of a restore at INFO
  f = FLAGS
  if f.format == "saved_model":
    out = export.export_saved_model(f.config, f.workdir, f.out, step=f.step, height=f.height, width=f.width,
                                    outputs=f.outputs, platforms=f.platforms)
    print(f"Wrote the TensorFlow SavedModel {out}")
    return
  recipe = f["config"].config_filename if hasattr(f["config"], "config_filename") else None
  if f.config.task == "panoptic":
    raise app.UsageError("export.py exports semantic and instance recipes; Panoptic FPN's fusion runs on the host "
                         "after the network, and no exported form of it exists yet: predict with predict.py.")
  if f.config.task == "instance":  # fixed-size detections (segjax.serving.export_instance)
    from segjax.serving import export_instance  # pylint: disable=import-outside-toplevel
    out = export_instance.export_checkpoint(f.config, f.workdir, f.out, step=f.step,
                                            batch=1 if f.batch == "b" else f.batch, height=f.height,
                                            width=f.width, platforms=f.platforms, recipe=recipe)
    meta = serving.read_meta(out)
    print(f"Wrote {out / serving.EXPORTED_FILE} ({meta['exported_bytes'] / 2**20:.1f} MiB) and "
          f"{out / serving.META_FILE}: input uint8 {tuple(meta['input']['shape'])} + image_sizes, outputs "
          f"{list(meta['outputs'])}.\nLoad it with: from segjax import serving; model = serving.load({str(out)!r}); "
          "model(images, image_sizes)")
    return
  out = export.export_checkpoint(f.config, f.workdir, f.out, step=f.step, batch=f.batch, height=f.height,
                                 width=f.width, outputs=f.outputs, platforms=f.platforms, recipe=recipe)
  meta = serving.read_meta(out)
  i = meta["input"]
  print(f"Wrote {out / serving.EXPORTED_FILE} ({meta['exported_bytes'] / 2**20:.1f} MiB; "
        f"{meta['parameters']['count']:,} parameters baked in as constants) and {out / serving.META_FILE}: input "
        f"uint8 {tuple(i['shape'])}, outputs {list(meta['outputs'])}, platforms {meta['platforms']}, checkpoint "
        f"step {meta['recipe']['checkpoint_step']}.\nLoad it with: from segjax import serving; "
        f"model = serving.load({str(out)!r}); model(images)")


def run() -> None:
  """The console script's entry point."""
  _define_flags()
  cli.run(main)
