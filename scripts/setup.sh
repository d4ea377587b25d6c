#!/usr/bin/env bash
# Create .venv (if missing) and install mptune with its test extras, at the library
# versions of scripts/constraints.txt (those the tests and the latest results ran with).
# torch is pinned to the CPU wheel this project is developed and tested with;
# install a CUDA build yourself first if you have a GPU (pip keeps it).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[test]" -c scripts/constraints.txt  # the tested versions
