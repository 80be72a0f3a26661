#!/usr/bin/env bash
# On a GPU machine with torch and Triton only (no vLLM, nothing installed): the Triton
# kernel tests against their references, then the kernel benchmarks, JSON written to
# benchmarks/results/kernels-<gpu>.json (or $1). Run from a checkout:
#   bash scripts/gpu_kernels.sh
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PYTHON=${PYTHON:-python}
GPU=$("$PYTHON" -c "import torch; print(torch.cuda.get_device_name().split()[-1].lower())")
OUT=${1:-benchmarks/results/kernels-$GPU.json}
if "$PYTHON" -c "import pytest" 2>/dev/null; then
  VISPEC_KERNEL_TESTS=1 "$PYTHON" -m pytest tests/kernels -q -p no:cacheprovider
else
  echo "pytest is not installed here: kernel tests skipped (the benchmark still checks the" \
       "tree kernel against its reference: triton_max_abs_diff)" >&2
fi
"$PYTHON" benchmarks/kernels.py --out "$OUT"
