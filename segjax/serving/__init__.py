"""Serving: export a checkpoint as StableHLO (`segjax.serving.export`) and run the artifact with numpy and jax only
(`segjax.serving.serving`, re-exported here: `from segjax import serving; serving.load(path)`)."""

from segjax.serving.serving import (EXPORTED_FILE, FORMAT, FORMAT_VERSION, META_FILE, ExportedDetector,  # noqa: F401
                                   ExportedSegmenter, load, read_meta)
