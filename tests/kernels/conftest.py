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
    from vllm_vispec.kernels.cases import shuffled_block_table
    block_table, num_blocks = shuffled_block_table(seq_lens, block_size, generator,
                                                   spare_blocks)
    key_cache = torch.randn(num_blocks, block_size, kv_heads, head_dim, generator=generator)
    value_cache = torch.randn(num_blocks, block_size, kv_heads, head_dim,
                              generator=generator)
    return block_table, key_cache, value_cache


def vllm_kv_cache(num_blocks, block_size, kv_heads, head_dim, dtype, token_major,
                  device=DEVICE):
    """An uninitialised attention-layer cache as vLLM binds it: logically
    ``[num_blocks, kv_heads, block_size, 2 * head_dim]`` (K and V side by side), stored
    token-major (FlashAttention, Triton attention) or head-major (the CPU backend)."""
    if token_major:
        storage = torch.empty(num_blocks, block_size, kv_heads, 2 * head_dim, dtype=dtype,
                              device=device)
        return storage.permute(0, 2, 1, 3)
    storage = torch.empty(num_blocks, kv_heads, block_size, 2 * head_dim, dtype=dtype,
                          device=device)
    return storage.permute(0, 1, 2, 3)  # already in logical order


def kernel_views(kv_cache):
    """K and V ``[num_blocks, block_size, kv_heads, head_dim]`` as vLLM's backends read
    them: ``kv_cache.transpose(1, 2).split(head_dim, -1)``."""
    return kv_cache.transpose(1, 2).split(kv_cache.shape[-1] // 2, -1)


def rehome_in_vllm_cache(key_cache, value_cache, token_major):
    """The same K/V values, moved into views of one vLLM-style cache tensor."""
    num_blocks, block_size, kv_heads, head_dim = key_cache.shape
    key_view, value_view = kernel_views(vllm_kv_cache(
        num_blocks, block_size, kv_heads, head_dim, key_cache.dtype, token_major,
        key_cache.device))
    key_view.copy_(key_cache)
    value_view.copy_(value_cache)
    return key_view, value_view
