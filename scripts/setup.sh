#!/usr/bin/env bash
# One-command set-up on a fresh machine: creates .venv, installs the CPU build of torch
# *first* (an unpinned torch would pull several GB of CUDA wheels), then the project with its
# test/docs/dev extras, and finally runs the project's main job.
#
#   scripts/setup.sh                 # set up, then run the main job
#   scripts/setup.sh --install-only  # set up only (what CI uses before the tests)
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
PYTHON="${PYTHON:-python3}"

if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# pip here resolves torch==2.13.0 to the local CPU wheel. Elsewhere, install a CPU torch into
# .venv yourself before running this script (e.g. from PyTorch's CPU wheel index); any
# torch>=2.4 already present is kept.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    .venv/bin/python -m pip install --quiet "torch==${TORCH_VERSION}"
fi
.venv/bin/python -m pip install --quiet -e ".[dev]"
.venv/bin/python -c "import torch, nemo_rl_theory; print(f'nemo_rl_theory {nemo_rl_theory.__version__} with torch {torch.__version__}')"

if [ "${1:-}" = "--install-only" ]; then
    exit 0
fi

# Main job: measure token_logprobs against the naive log_softmax + gather.
.venv/bin/nox -s bench
