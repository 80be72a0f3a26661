"""Where the draft layer's keys and values sit in the paged cache vLLM binds to it.

vLLM 0.32 binds every attention layer's cache as a 4-D view ``[num_blocks, kv_heads,
block_size, 2 * head_dim]`` whose strides follow the one physical layout resolved for the
whole model (``KVCacheLayout``, ``VLLM_KV_CACHE_LAYOUT``): token-major or head-major
inside a block, layers inside or outside blocks. Each backend splits that view into K and
V its own way, and the draft follows the backend its attention layer was given, so that
the bytes it writes are where that backend would put them:

- ``LAST_DIM`` (FlashAttention, FlashInfer, Triton attention):
  ``kv_cache.transpose(1, 2).split(head_dim, -1)``; any stride order.
- ``BLOCK_HALVES`` (the CPU backend): ``kv_cache.view(B, H, 2 * N, D).chunk(2, 2)``, keys
  then values per (block, head); needs each (block, head) stored as one run. Inside its
  key half vLLM's CPU cache-write op packs keys in an order of its own (per ISA); the draft
  keeps them row by row, which only the draft reads, so it never calls that op.

No vLLM imports: this is shape and stride logic on torch tensors alone.
"""

from __future__ import annotations

import torch

LAST_DIM = "last_dim"
BLOCK_HALVES = "block_halves"

# Backend name (AttentionBackend.get_name()) -> how it splits a layer's cache into K and V.
BACKEND_KV_SPLITS = {
    "FLASH_ATTN": LAST_DIM,
    "FLASHINFER": LAST_DIM,
    "TRITON_ATTN": LAST_DIM,
    "CPU_ATTN": BLOCK_HALVES,
}


def describe(kv_cache: torch.Tensor) -> str:
    return (f"shape {tuple(kv_cache.shape)}, strides {tuple(kv_cache.stride())}, "
            f"dtype {kv_cache.dtype}")


def check_draft_kv_cache(kv_cache: torch.Tensor, backend: str, num_kv_heads: int,
                         head_dim: int) -> str:
    """The K/V split of the draft layer's cache under ``backend``; raises ``ValueError``
    naming the backend and the cache when the draft cannot read and write it exactly."""
    split = BACKEND_KV_SPLITS.get(backend)

    def refuse(why: str) -> ValueError:
        return ValueError(
            f"vispec's draft cannot use the KV cache vLLM gave its attention layer under "
            f"the {backend} attention backend ({describe(kv_cache)}): {why}")

    if split is None:
        raise refuse(f"a backend whose cache layout the draft does not know (known: "
                     f"{', '.join(BACKEND_KV_SPLITS)}); pick one with "
                     f'"attention_backend" in the speculative config')
    expected = (num_kv_heads, 2 * head_dim)
    if kv_cache.dim() != 4 or (kv_cache.shape[1], kv_cache.shape[3]) != expected:
        raise refuse(f"expected a 4-D [num_blocks, {num_kv_heads}, block_size, "
                     f"{2 * head_dim}] view")
    if kv_cache.stride(-1) != 1:
        raise refuse("its last dimension is not contiguous")
    if not kv_cache.dtype.is_floating_point or kv_cache.element_size() < 2:
        # Quantized caches (fp8 stored as bytes) need scales the draft does not apply.
        raise refuse("the draft keeps its KV cache in the model dtype, not a quantized one")
    if split == BLOCK_HALVES and kv_cache.shape[2] > 1 and kv_cache.stride(2) != 2 * head_dim:
        raise refuse("the CPU backend's split needs each (block, head) stored as one run "
                     "(a head-major layout such as LBHNC)")
    return split


def key_value_views(kv_cache: torch.Tensor,
                    split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Key and value caches as ``[num_blocks, block_size, kv_heads, head_dim]`` views of
    ``kv_cache`` (any strides, ``stride(-1) == 1``), split as the backend splits them."""
    num_blocks, heads, block_size, two_d = kv_cache.shape
    head_dim = two_d // 2
    if split == LAST_DIM:
        key, value = kv_cache.transpose(1, 2).split(head_dim, dim=-1)
        return key, value
    if split == BLOCK_HALVES:
        key, value = kv_cache.view(num_blocks, heads, 2 * block_size, head_dim).chunk(2, dim=2)
        return key.transpose(1, 2), value.transpose(1, 2)
    raise ValueError(f"unknown KV split {split!r}")


def check_kernel_block_sizes(kv_cache_config, kernel_block_sizes) -> None:
    """vispec reads the draft's cache (and, verifying trees, the target's) by the
    scheduler's block ids; a backend that splits each cache block into smaller kernel
    blocks (e.g. FlashInfer on Hopper with --block-size 128) would need vLLM's converted
    block tables. Refused at start-up instead."""
    sizes = {getattr(g.kv_cache_spec, "block_size", None)
             for g in kv_cache_config.kv_cache_groups}
    split = sorted(k for k in (kernel_block_sizes or ()) if k not in sizes)
    if split:
        raise ValueError(
            f"vispec needs the attention kernels' block size to equal the KV cache's block "
            f"size; this backend splits blocks of {sorted(s for s in sizes if s)} tokens "
            f"into kernel blocks of {split}: start vLLM with --block-size {split[0]}")
