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
import torch.nn.functional as F


@dataclass
class CompressedAttentionMetadata:
    """One forward's view of the batch (host lists are small: one entry per request)."""

    query_start_loc: list[int]  # [num_reqs + 1] token offsets of each request's queries
    query_positions: torch.Tensor  # [num_tokens] position (target index space) per query
    slot_mapping: torch.Tensor  # [num_tokens] paged slot for each new K/V (< 0: skip)
    block_table: torch.Tensor  # [num_reqs, max_blocks]
    kept_positions: list[torch.Tensor]  # per request: key positions to read, ascending

    @property
    def num_reqs(self) -> int:
        return len(self.query_start_loc) - 1


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


def compressed_paged_attention_torch(query: torch.Tensor, key_cache: torch.Tensor,
                                     value_cache: torch.Tensor,
                                     meta: CompressedAttentionMetadata,
                                     scale: float) -> torch.Tensor:
    """Reference path. ``query`` [num_tokens, heads, head_dim] -> same shape."""
    out = torch.zeros_like(query)
    block_size = key_cache.shape[1]
    for r in range(meta.num_reqs):
        start, end = meta.query_start_loc[r], meta.query_start_loc[r + 1]
        kept = meta.kept_positions[r]
        if end == start or kept.numel() == 0:
            continue
        blocks = meta.block_table[r, kept // block_size].long()
        keys = key_cache[blocks, kept % block_size].to(query.dtype).transpose(0, 1)
        values = value_cache[blocks, kept % block_size].to(query.dtype).transpose(0, 1)
        visible = kept[None, :] <= meta.query_positions[start:end, None]
        attn = F.scaled_dot_product_attention(
            query[start:end].transpose(0, 1), keys, values, attn_mask=visible, scale=scale,
            enable_gqa=keys.shape[0] != query.shape[1])
        # A query with no visible key (only a dropped slot can be one) gets zeros; its
        # output is never used.
        out[start:end] = torch.nan_to_num(attn.transpose(0, 1), nan=0.0)
    return out


def compressed_paged_attention(query: torch.Tensor, key_cache: torch.Tensor,
                               value_cache: torch.Tensor, meta: CompressedAttentionMetadata,
                               scale: float) -> torch.Tensor:
    """The dispatch point for the draft's attention step."""
    return compressed_paged_attention_torch(query, key_cache, value_cache, meta, scale)
