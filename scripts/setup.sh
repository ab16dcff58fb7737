#!/usr/bin/env bash
# Creates .venv and installs PETStabilityDenoise with its test, lint (ruff, mypy) and cohort (Ray) dependencies.
# torch goes first and pinned, so that pip never resolves a bare 'torch' to the
# CUDA build (gigabytes). Override with TORCH_SPEC, e.g. TORCH_SPEC="torch==2.5.1".
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "$TORCH_SPEC"
.venv/bin/python -m pip install --quiet -e ".[test,lint,cohort]"
.venv/bin/python -c "import torch, monai, SimpleITK, numba, PETStabilityDenoiseLib; print('PETStabilityDenoise', PETStabilityDenoiseLib.__version__, 'with torch', torch.__version__)"
