#!/usr/bin/env bash
# GPU benchmark, one command: T5-base-shaped and ~1B-Llama-shaped (Llama-3.2-1B shape)
# random-weight models, bf16 weights, SDPA attention. Writes benchmarks/results/gpu.{json,md,png}
# with the GPU's name. Needs torch with CUDA, transformers and peft; mptune is taken from src/.
#
#   bash benchmarks/gpu/run.sh               # full run (~5 min on one H100)
#   bash benchmarks/gpu/run.sh --dry-run     # tiny shapes on CPU: checks the script, writes nothing
set -euo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
exec "${PYTHON:-python}" benchmarks/gpu/bench.py "$@"
