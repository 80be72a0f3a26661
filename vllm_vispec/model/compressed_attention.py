"""The draft's attention over its paged KV cache in ViSpec's compressed layout.

ViSpec's draft sequence keeps text slots and each image's compressed slot(s) and drops
the image's other slots, while positions stay in the target's index space. In vLLM the
draft layer's paged KV cache has one slot per target position, so kept slots live at their
natural positions; this attention reads only the kept positions of each request (the
dropped image slots are never read) and writes new K/V like any vLLM attention.

:func:`compressed_paged_attention` is the single dispatch point: the PyTorch path here
runs everywhere; a Triton kernel takes it over on CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..kernels.compressed_attention import (compressed_paged_attention_ref,
                                            compressed_paged_attention_triton, kernel_supports)


@dataclass
class TreeRows:
    """A tree level's extra keys: the K/V of the tree nodes drafted so far (see
    kernels/tree_attention.py). The level's queries write theirs at ``write_rows`` and
    skip the paged cache."""

    key: torch.Tensor  # [rows, kv_heads, head_dim]
    value: torch.Tensor
    write_rows: torch.Tensor  # [num_tokens] row of each query's own K/V
    start: torch.Tensor  # [num_reqs] int32 first row of each request
    length: torch.Tensor  # [num_reqs] int32 rows of each request, this level's included
    anc_bits: torch.Tensor  # [num_tokens] int64 rows on each query's path (itself too)


@dataclass
class CompressedAttentionMetadata:
    """One forward's view of the batch."""

    query_start_loc: list[int]  # [num_reqs + 1] token offsets of each request's queries
    query_positions: torch.Tensor  # [num_tokens] position (target index space) per query
    token_req: torch.Tensor  # [num_tokens] int32 request index per query
    slot_mapping: torch.Tensor  # [num_tokens] paged slot for each new K/V (< 0: skip)
    block_table: torch.Tensor  # [num_reqs, max_blocks]
    # Kept positions as half-open intervals: request r's are [cu_kept[r], cu_kept[r + 1]).
    kept_starts: torch.Tensor  # int32
    kept_ends: torch.Tensor  # int32
    cu_kept: torch.Tensor  # [num_reqs + 1] int32
    tree: TreeRows | None = None  # set while a draft tree grows


def paged_kv_views(kv_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Key and value caches as ``[num_blocks, block_size, kv_heads, head_dim]`` views.

    The draft layer's cache tensor is allocated by vLLM in its attention backend's shape;
    the draft alone reads and writes it, so any consistent view works.
    """
    if kv_cache.dim() == 4:
        # CPU backend: [num_blocks, kv_heads, block_size, 2 * head_dim], keys then values
        # per (block, head).
        num_blocks, heads, block_size, two_d = kv_cache.shape
        kv = kv_cache.view(num_blocks, heads, 2 * block_size, two_d // 2)
        return (kv[:, :, :block_size].permute(0, 2, 1, 3),
                kv[:, :, block_size:].permute(0, 2, 1, 3))
    if kv_cache.dim() == 5 and kv_cache.shape[0] == 2:
        # Flash-attention style: [2, num_blocks, block_size, kv_heads, head_dim].
        return kv_cache[0], kv_cache[1]
    raise NotImplementedError(
        f"vispec's draft attention does not know the KV cache layout {tuple(kv_cache.shape)}")


def write_kv(key_cache: torch.Tensor, value_cache: torch.Tensor, key: torch.Tensor,
             value: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    block_size = key_cache.shape[1]
    valid = slot_mapping >= 0
    slots = slot_mapping[valid].long()
    key_cache[slots // block_size, slots % block_size] = key[valid].to(key_cache.dtype)
    value_cache[slots // block_size, slots % block_size] = value[valid].to(value_cache.dtype)


def compressed_paged_attention(query: torch.Tensor, key_cache: torch.Tensor,
                               value_cache: torch.Tensor, meta: CompressedAttentionMetadata,
                               scale: float) -> torch.Tensor:
    """The dispatch point for the draft's attention step: the Triton kernel where it can
    run (CUDA), its PyTorch reference elsewhere."""
    args = (query, key_cache, value_cache, meta.block_table, meta.token_req,
            meta.query_positions, meta.kept_starts, meta.kept_ends, meta.cu_kept, scale)
    if query.is_cuda and kernel_supports(query, key_cache):
        return compressed_paged_attention_triton(*args)
    return compressed_paged_attention_ref(*args)
