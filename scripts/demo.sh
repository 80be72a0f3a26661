#!/usr/bin/env bash
# Sets up the environment if needed, then runs the demo (vispec-demo --help for options).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/scripts/setup.sh"
source "$ROOT/scripts/env.sh"
exec "$ROOT/.venv/bin/python" -m vllm_vispec.demo "$@"
