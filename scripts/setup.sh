#!/usr/bin/env bash
# One-shot set-up on a fresh machine: a virtual environment in .venv with torch (the CPU build where
# there is no NVIDIA GPU), qnas in editable mode with its dev/export/postgres extras, and the
# Fashion-MNIST data from Debian when apt is available and the data is missing. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { echo "qnas needs Python >= 3.10" >&2; exit 1; }
  "$PY" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
$PIP install --quiet --upgrade pip

if ! .venv/bin/python -c 'import torch' 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    $PIP install --quiet torch                       # CUDA build from PyPI
  elif ls /opt/wheels/torch-2.13.0+cpu-*.whl >/dev/null 2>&1; then
    $PIP install --quiet torch==2.13.0               # CPU wheel from this machine's local wheel dir
  else
    # A plain `torch` would pull a multi-GB CUDA build; take the CPU wheel instead.
    $PIP install --quiet torch --index-url https://download.pytorch.org/whl/cpu
  fi
fi
$PIP install --quiet -e ".[dev,export,postgres]"

# Debian packages: the Fashion-MNIST data, a PostgreSQL server (multi-worker search test) and
# Chromium (the report render check). Only what is missing is installed.
need=()
[ -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || need+=(dataset-fashion-mnist)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need+=(postgresql)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    echo "installing Debian packages: ${need[*]}"
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "note: no apt-get; install ${need[*]} yourself (or pass --data-dir to qnas)" >&2
  fi
fi
.venv/bin/qnas --version
echo "setup done: activate with 'source .venv/bin/activate'"
