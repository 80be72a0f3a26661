"""The draft's attention over its paged KV cache in ViSpec's compressed layout.

ViSpec's draft sequence keeps text slots and each image's compressed slot(s) and drops
the image's other slots, while positions stay in the target's index space. In vLLM the
draft layer's paged KV cache has one slot per target position, so kept slots live at their
natural positions; this attention reads only the kept positions of each request (the
dropped image slots are never read) and writes new K/V like any vLLM attention.

:func:`compressed_paged_attention` is the single dispatch point: a Triton kernel on CUDA,
one batched PyTorch gather and attention elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import kernel_dispatch
from .kv_layout import key_value_views


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
    """One forward's view of the batch, all on the device (draft_metadata.py builds it
    without reading anything back)."""

    query_positions: torch.Tensor  # [num_tokens] position (target index space) per query
    token_req: torch.Tensor  # [num_tokens] int32 request index per query
    slot_mapping: torch.Tensor  # [num_tokens] paged slot for each new K/V (< 0: skip)
    block_table: torch.Tensor  # [num_reqs, max_blocks]
    # Kept positions as half-open intervals: request r's are [cu_kept[r], cu_kept[r + 1]).
    # The last may run past the sequence: queries attend causally by position.
    kept_starts: torch.Tensor  # int32
    kept_ends: torch.Tensor  # int32
    cu_kept: torch.Tensor  # [num_reqs + 1] int32
    # The same positions padded per request, for the one-gather path (CPU): cache block
    # and offset of each, and the position itself (beyond every query for padding).
    kept_blocks: torch.Tensor | None = None  # [num_reqs, L] int64
    kept_offsets: torch.Tensor | None = None  # [num_reqs, L] int64
    kept_pos: torch.Tensor | None = None  # [num_reqs, L] int64
    # Row of each query in a [num_reqs * max_query_len + 1] padding (the last row: none);
    # None when the queries already are that padding (every request max_query_len).
    query_rows: torch.Tensor | None = None  # [num_tokens] int64
    max_query_len: int = 1
    blind_rows: bool = True  # some query may see no key (a prompt's dropped slots)
    tree: TreeRows | None = None  # set while a draft tree grows


def paged_kv_views(kv_cache: torch.Tensor,
                   split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Key and value caches as ``[num_blocks, block_size, kv_heads, head_dim]`` views
    (any strides, ``stride(-1) == 1``) of the cache vLLM bound to the draft's layer, split
    into K and V as its attention backend splits it (``split``, see kv_layout.py; checked
    when the cache is bound)."""
    return key_value_views(kv_cache, split)


def write_kv(key_cache: torch.Tensor, value_cache: torch.Tensor, key: torch.Tensor,
             value: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Store each token's K/V at its paged slot; slots < 0 (padding) store nothing.

    Fixed shapes and no host round trip: a padding row repeats the first real row's
    write (same slot, same data, so the order of duplicate writes does not matter);
    when no row is real, every row writes slot 0's current contents back."""
    if slot_mapping.numel() == 0:
        return
    block_size = key_cache.shape[1]
    slots = slot_mapping.long()
    rows = torch.arange(slots.shape[0], device=slots.device)
    first_real = torch.argmax((slots >= 0).to(torch.int32))
    source = torch.where(slots >= 0, rows, first_real)
    slots = slots[source]
    real = slots >= 0
    slots = torch.where(real, slots, 0)
    blocks, offsets = slots // block_size, slots % block_size
    for cache, new in ((key_cache, key), (value_cache, value)):
        kept = cache[0, 0].unsqueeze(0)  # a view: torch.where below reads it before the write
        rows_in = torch.where(real[:, None, None], new[source].to(cache.dtype), kept)
        cache[blocks, offsets] = rows_in


def compressed_paged_attention(query: torch.Tensor, key_cache: torch.Tensor,
                               value_cache: torch.Tensor, meta: CompressedAttentionMetadata,
                               scale: float) -> torch.Tensor:
    """The draft's attention step, as kernel_dispatch decides: the Triton kernel on CUDA
    (VLLM_VISPEC_KERNELS=triton: also on CPU, in Triton's interpreter), the one-gather
    PyTorch path on CPU, the per-request reference with VLLM_VISPEC_KERNELS=reference."""
    return kernel_dispatch.compressed_paged_attention(
        query, key_cache, value_cache, meta.block_table, meta.token_req,
        meta.query_positions, meta.kept_starts, meta.kept_ends, meta.cu_kept, scale,
        padded=None if meta.kept_pos is None else (
            meta.kept_blocks, meta.kept_offsets, meta.kept_pos, meta.query_rows,
            meta.max_query_len, meta.blind_rows))
