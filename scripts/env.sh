# Environment shared by the demo and the tests: offline, caches and IPC files in the repo.
ROOT=${ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
export HF_HUB_OFFLINE=1
export VLLM_VISPEC_CACHE_DIR=${VLLM_VISPEC_CACHE_DIR:-$ROOT/.cache/vllm_vispec}
export VLLM_CACHE_ROOT=${VLLM_CACHE_ROOT:-$ROOT/.cache/vllm}
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$ROOT/.cache/inductor}
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}
export TMPDIR=${VISPEC_TMPDIR:-$ROOT/.cache/tmp}
mkdir -p "$TMPDIR"
