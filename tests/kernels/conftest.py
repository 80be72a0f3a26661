"""Kernel tests: on a machine without CUDA, Triton runs in its interpreter.

These tests run in their own pytest process (scripts/test.sh does that): Triton reads
TRITON_INTERPRET when kernels are defined, and it must never reach a vLLM process. They
need torch and Triton only, so they also run from a plain checkout on a GPU machine.
"""

import importlib
import os
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

try:
    import vllm_vispec.kernels  # noqa: F401  (installed: kernels/ maps here)
except ImportError:  # a checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    import vllm_vispec
    sys.modules["vllm_vispec.kernels"] = importlib.import_module("kernels")
    vllm_vispec.kernels = sys.modules["vllm_vispec.kernels"]

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def shuffled_paged_cache(seq_lens, block_size, kv_heads, head_dim, generator, spare_blocks):
    """A paged K/V cache of random values whose blocks are handed to the requests in a
    random order (plus unused spares): (block_table, key_cache, value_cache)."""
    blocks_per_req = [-(-s // block_size) for s in seq_lens]
    num_blocks = sum(blocks_per_req) + spare_blocks
    perm = torch.randperm(num_blocks, generator=generator)
    block_table = torch.zeros(len(seq_lens), max(blocks_per_req), dtype=torch.int32)
    used = 0
    for r, n in enumerate(blocks_per_req):
        block_table[r, :n] = perm[used:used + n]
        used += n
    key_cache = torch.randn(num_blocks, block_size, kv_heads, head_dim, generator=generator)
    value_cache = torch.randn(num_blocks, block_size, kv_heads, head_dim,
                              generator=generator)
    return block_table, key_cache, value_cache
