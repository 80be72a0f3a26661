#!/usr/bin/env bash
# Sets up the environment if needed, then runs the test suite in two pytest processes:
# the Triton kernel tests (in Triton's interpreter on a CPU-only machine), then everything
# else. Extra arguments go to both.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/scripts/setup.sh"
source "$ROOT/scripts/env.sh"
cd "$ROOT"
VISPEC_KERNEL_TESTS=1 "$ROOT/.venv/bin/python" -m pytest tests/kernels "$@"
exec "$ROOT/.venv/bin/python" -m pytest tests "$@"
