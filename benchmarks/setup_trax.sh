#!/usr/bin/env bash
# Creates the virtual environment that `benchmarks/peers/trax_worker.py` runs in: Trax 1.4.1 (the last Trax release,
# 2021) on CPU, with the pins that make it import and train on Python 3.11.
#   usage: bash benchmarks/setup_trax.sh [VENV_DIR]   (default .venv-trax)
set -euo pipefail

VENV="${1:-.venv-trax}"
PYTHON="${PYTHON:-python3}"  # Python 3.11

"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --upgrade pip

# Why each pin (trax 1.4.1 itself pins none of its dependencies):
# - jax/jaxlib 0.4.13: the oldest jaxlib with cp311 wheels on PyPI, so the closest to the jax Trax 1.4.1 was
#   written against; it still has every jax API the training path calls (Trax's fastmath already uses `.at[]`).
# - tensorflow 2.12.1 + tensorflow-text 2.12.1: `import trax` imports both (trax.data, trax.shapes, layers);
#   2.12 is the oldest TF with cp311 wheels, and tensorflow-text 2.12.x requires TF 2.12.
# - numpy 1.23.5: TF 2.12 requires numpy<1.24 (and Trax predates numpy 2).
# - tensorflow-datasets 4.9.2: imported by trax.fastmath; a release of TF 2.12's time (the newest pulls in
#   pyarrow, simple_parsing, ... and targets newer TF).
# - tensorflow-metadata 1.13.1: tfds imports its protos; the newest (1.21) is generated for protobuf 5
#   (`google.protobuf.runtime_version`), and TF 2.12 requires protobuf<5.
pip_pins=(
  "trax==1.4.1"
  "jax==0.4.13"
  "jaxlib==0.4.13"
  "tensorflow==2.12.1"
  "tensorflow-text==2.12.1"
  "tensorflow-datasets==4.9.2"
  "tensorflow-metadata==1.13.1"
  "numpy==1.23.5"
)
"$VENV/bin/pip" install --quiet "${pip_pins[@]}"

# Smoke test: Trax imports on the JAX backend.
"$VENV/bin/python" -c "import trax, jax; print('trax ok, jax', jax.__version__, jax.devices())"
