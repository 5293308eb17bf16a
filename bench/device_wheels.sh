#!/usr/bin/env bash
# Downloads into .whl/ (git-ignored) the wheels bench/device_suite.py needs on the GPU machine beyond what its
# image has (Python 3.12, jax 0.11 CUDA, flax, optax, orbax, chex, torch, numpy, pillow, absl-py, pyyaml, pyarrow,
# requests, tqdm, wrapt, six, etils, psutil ...; ../shared/ENVIRONMENT.md). About 12 MB, under the 64 MiB
# a device run may carry:
#   ml-collections            segjax.models and segjax.training import it
#   grain, tensorflow-datasets, array-record and their missing dependencies
#                             the input-pipeline part runs segjax.data.pipeline (grain) itself; tfds is imported
#                             by segjax.data.datasets for the CamVid spec. No TensorFlow.
# Run here (where pip reaches a registry):   bash bench/device_wheels.sh
# Then on the GPU machine, with carry [".whl"]:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
#   export PYTHONPATH=/tmp/site
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
mkdir -p .whl
WHEELS=(
  ml-collections==1.1.0
  grain==0.2.18 array-record==0.8.6 portpicker==1.6.0
  tensorflow-datasets==4.9.10 importlib_resources==7.1.0 dm-tree==0.1.10 immutabledict==4.3.1
  simple-parsing==0.1.9 docstring-parser==0.18.0 tensorflow-metadata==1.21.0 googleapis-common-protos==1.76.0
  termcolor==3.3.0 toml==0.10.2
  # tensorflow-metadata's generated code (gencode 6.31) and googleapis-common-protos need protobuf >= 6.33; the
  # image's may be older, and /tmp/site comes first on PYTHONPATH: the suite's processes use this one.
  protobuf==7.36.2
)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d .whl "${WHEELS[@]}"
# promise (imported by tfds) is published as a source archive only: build its pure-Python wheel here.
"$PY" -m pip wheel -q --no-deps -w .whl promise==2.3
du -sh .whl
