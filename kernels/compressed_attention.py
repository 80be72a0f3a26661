"""Draft paged attention over ViSpec's compressed layout.

The draft layer's KV cache is paged like vLLM's: ``key_cache``/``value_cache`` are
``[num_blocks, block_size, kv_heads, head_dim]`` (any strides), ``block_table[r, i]`` is the
cache block of request ``r``'s positions ``[i * block_size, (i + 1) * block_size)``. Each
request reads only its *kept* positions, given as half-open intervals (text slots and each
image's compressed slot); dropped image slots are never read. Queries attend causally by
position (target index space). Works for decode (one query per request) and prefill/verify
(many) alike: every query token carries its request index and position.

No vLLM imports: this module runs wherever torch (and, for the kernel, Triton) does.
"""

from __future__ import annotations

import torch

from ._paged import kept_positions, masked_attention
from ._triton import triton, tl


def compressed_paged_attention_ref(query, key_cache, value_cache, block_table, token_req,
                                   query_positions, kept_starts, kept_ends, cu_kept,
                                   scale: float) -> torch.Tensor:
    """PyTorch reference. ``query`` [T, heads, D] -> [T, heads, D].

    ``token_req`` [T] request of each query; ``query_positions`` [T]; request ``r``'s kept
    intervals are ``kept_starts/kept_ends[cu_kept[r]:cu_kept[r + 1]]``.
    """
    out = torch.zeros_like(query)
    block_size = key_cache.shape[1]
    group = query.shape[1] // key_cache.shape[2]
    cu = cu_kept.tolist()
    reqs = token_req.tolist()
    for r in sorted(set(reqs)):
        rows = (token_req == r).nonzero().squeeze(1)
        kept = kept_positions(kept_starts, kept_ends, cu, r, query.device)
        if kept.numel() == 0:
            continue
        blocks = block_table[r, kept // block_size].long()
        keys = key_cache[blocks, kept % block_size].float().transpose(0, 1)
        values = value_cache[blocks, kept % block_size].float().transpose(0, 1)
        if group > 1:
            keys = keys.repeat_interleave(group, dim=0)
            values = values.repeat_interleave(group, dim=0)
        visible = kept[None, :] <= query_positions[rows][:, None]
        out[rows] = masked_attention(query[rows], keys, values, visible, scale)
    return out


def compressed_paged_attention_padded(query, key_cache, value_cache, kept_blocks,
                                      kept_offsets, kept_pos, query_rows, query_positions,
                                      max_query_len: int, scale: float,
                                      blind_rows: bool = True) -> torch.Tensor:
    """The same attention as the reference, batched: one gather of every request's kept
    keys and values (padded to the batch's longest), one masked attention for the batch.

    ``kept_blocks``/``kept_offsets``/``kept_pos`` [R, L]: cache block, offset and position
    of each request's kept positions (padding: a position beyond every query);
    ``query_rows`` [T]: each query's row ``r * max_query_len + i`` in the padded batch
    (``R * max_query_len``: none), or None when the queries already are that batch
    (``T == R * max_query_len``, request-major). ``blind_rows``: some query may see no key
    at all (its output is then zeros, as in the reference). Fixed work per call, no host
    round trip.
    """
    num_tokens, heads, head_dim = query.shape
    num_reqs = kept_pos.shape[0]
    rows = num_reqs * max_query_len
    keys = key_cache[kept_blocks, kept_offsets].transpose(1, 2)  # [R, kv_heads, L, D]
    values = value_cache[kept_blocks, kept_offsets].transpose(1, 2)
    if query_rows is None:
        padded_q, padded_pos = query, query_positions
    else:
        padded_q = query.new_zeros(rows + 1, heads, head_dim)
        padded_q[query_rows] = query
        padded_pos = query_positions.new_full((rows + 1,), -1)
        padded_pos[query_rows] = query_positions
    q = padded_q[:rows].view(num_reqs, max_query_len, heads, head_dim).transpose(1, 2)
    visible = kept_pos[:, None, None, :] <= padded_pos[:rows].view(num_reqs, 1, -1, 1)
    out = torch.nn.functional.scaled_dot_product_attention(
        q, keys.to(q.dtype), values.to(q.dtype), attn_mask=visible, scale=scale,
        enable_gqa=heads != keys.shape[1])
    out = out.transpose(1, 2).reshape(rows, heads, head_dim)
    if blind_rows or query_rows is not None:
        # Rows that see no key (padding among them) come out as NaN: zeros instead.
        out = torch.nan_to_num(out, nan=0.0)
    if query_rows is None:
        return out
    return torch.cat((out, out.new_zeros(1, heads, head_dim)))[query_rows]


if triton is not None:
    from ._paged import attend_kept

    @triton.jit
    def _compressed_attention_kernel(
        # Strides are int64 (as in vLLM's own Triton attention): offsets below are
        # products with them and must not wrap at 2^31 elements.
        q_ptr, stride_qt: tl.int64, stride_qh: tl.int64,  # [T, heads, D]
        # [blocks, block_size, kv_heads, D]
        k_ptr, stride_kb: tl.int64, stride_ks: tl.int64, stride_kh: tl.int64,
        v_ptr, stride_vb: tl.int64, stride_vs: tl.int64, stride_vh: tl.int64,
        o_ptr, stride_ot: tl.int64, stride_oh: tl.int64,  # [T, heads, D]
        block_table_ptr, stride_bt: tl.int64,  # [reqs, max_blocks]
        token_req_ptr, qpos_ptr,  # [T], [T]
        kept_start_ptr, kept_end_ptr, cu_kept_ptr,  # flat intervals, [reqs + 1]
        scale,
        GROUP: tl.constexpr, KV_BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):
        # One program per (query token, query head): an online softmax over the kept
        # positions of the token's request up to its own.
        tok = tl.program_id(0)
        head = tl.program_id(1)
        kv_head = head // GROUP
        req = tl.load(token_req_ptr + tok)
        qpos = tl.load(qpos_ptr + tok)
        d = tl.arange(0, HEAD_DIM)
        q_row = tok.to(tl.int64) * stride_qt + head.to(tl.int64) * stride_qh
        o_row = tok.to(tl.int64) * stride_ot + head.to(tl.int64) * stride_oh
        q = tl.load(q_ptr + q_row + d).to(tl.float32) * scale

        m = tl.full((), float("-inf"), tl.float32)
        l = tl.zeros((), tl.float32)
        acc = tl.zeros((HEAD_DIM,), tl.float32)
        m, l, acc = attend_kept(q, d, m, l, acc, req, kv_head, qpos + 1,
                                k_ptr, stride_kb, stride_ks, stride_kh,
                                v_ptr, stride_vb, stride_vs, stride_vh,
                                block_table_ptr, stride_bt, kept_start_ptr, kept_end_ptr,
                                cu_kept_ptr, KV_BLOCK, BLOCK_N)
        out = tl.where(l > 0, acc / tl.maximum(l, 1e-30), 0.0)
        tl.store(o_ptr + o_row + d, out.to(o_ptr.dtype.element_ty))


def compressed_paged_attention_triton(query, key_cache, value_cache, block_table, token_req,
                                      query_positions, kept_starts, kept_ends, cu_kept,
                                      scale: float, block_n: int = 32) -> torch.Tensor:
    num_tokens, heads, head_dim = query.shape
    out = torch.empty_like(query)
    if num_tokens == 0:
        return out
    _compressed_attention_kernel[(num_tokens, heads)](
        query, query.stride(0), query.stride(1),
        key_cache, key_cache.stride(0), key_cache.stride(1), key_cache.stride(2),
        value_cache, value_cache.stride(0), value_cache.stride(1), value_cache.stride(2),
        out, out.stride(0), out.stride(1),
        block_table, block_table.stride(0),
        token_req, query_positions, kept_starts, kept_ends, cu_kept,
        scale,
        GROUP=heads // key_cache.shape[2], KV_BLOCK=key_cache.shape[1],
        HEAD_DIM=head_dim, BLOCK_N=block_n,
    )
    return out
