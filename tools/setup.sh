#!/usr/bin/env bash
# Set up dagir in a virtual environment: graphviz's `dot` (Debian), torch, and dagir with its tests.
#
# torch is pinned to 2.13.0 unless the venv already has a torch: on a CPU-only machine with the local
# wheel this is the small CPU build; a GPU user installs the torch build they want into the venv first
# (or sets DAGIR_TORCH, e.g. DAGIR_TORCH="torch==2.13.0 --index-url <their CUDA index>").
set -euo pipefail
venv="${1:-.venv}"
python="${PYTHON:-python3}"

if ! command -v dot >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing graphviz (for SVG drawings)"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq graphviz >/dev/null \
      || echo "setup: could not install graphviz; drawings will be written as DOT only"
  else
    echo "setup: graphviz's 'dot' is not installed; drawings will be written as DOT only"
  fi
fi

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
if ! "$venv/bin/python" -c "import torch" >/dev/null 2>&1; then
  # shellcheck disable=SC2086
  "${pip[@]}" ${DAGIR_TORCH:-torch==2.13.0}
fi
"${pip[@]}" -e ".[test,export,tensorboard,parquet,mlflow,jacobian]"  # the extras: ONNX checks, TensorBoard, Parquet tables, MLflow, Jacobian descent's QP solver (the core runs and tests without them)
touch "$venv/.installed"
