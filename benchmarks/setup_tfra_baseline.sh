#!/usr/bin/env bash
# Makes the venv the benchmarks use to run TFRA 0.8.1 itself beside tfra-redis (the peer to
# beat): TensorFlow 2.16 with tf_keras, as TFRA 0.8.1 needs. Everything comes from PyPI.
#   benchmarks/setup_tfra_baseline.sh [VENV_DIR]     (default: benchmarks/.tfra-venv)
# The benchmarks run it with TF_USE_LEGACY_KERAS=1. Quick when the venv is already there.
set -euo pipefail
export PIP_ROOT_USER_ACTION=ignore
cd "$(dirname "$0")"
venv="${1:-.tfra-venv}"
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c \
    "import tensorflow_recommenders_addons, tf_keras" >/dev/null 2>&1; then
  echo "TFRA baseline venv ready: $venv"
  exit 0
fi
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q \
  tensorflow==2.16.2 tf_keras==2.16.0 tensorflow-recommenders-addons==0.8.1 \
  numpy==1.26.4 protobuf==4.25.9
TF_USE_LEGACY_KERAS=1 "$venv/bin/python" -c \
  "import tensorflow_recommenders_addons as tfra; print('TFRA', tfra.__version__)"
echo "TFRA baseline venv ready: $venv"
