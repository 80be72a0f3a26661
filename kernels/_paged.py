"""What the paged-attention kernels share: reading a request's kept positions from a
paged KV cache (PyTorch and Triton), and the online-softmax update."""

from __future__ import annotations

import torch

from ._triton import tl, triton


def kept_positions(kept_starts, kept_ends, cu: list[int], req: int, device) -> torch.Tensor:
    """Request ``req``'s kept positions, from its half-open intervals."""
    starts = kept_starts[cu[req]:cu[req + 1]].tolist()
    ends = kept_ends[cu[req]:cu[req + 1]].tolist()
    return torch.cat([torch.arange(s, e) for s, e in zip(starts, ends)]
                     + [torch.zeros(0, dtype=torch.long)]).to(device)


def masked_attention(query_rows, keys, values, visible, scale: float) -> torch.Tensor:
    """``query_rows`` [n, heads, D] over ``keys``/``values`` [heads, m, D] where
    ``visible`` [n, m]; rows that see nothing get zeros."""
    scores = query_rows.float().transpose(0, 1) @ keys.transpose(1, 2) * scale
    scores = scores.masked_fill(~visible[None], float("-inf"))
    probs = torch.nan_to_num(scores.softmax(-1), nan=0.0)
    return (probs @ values).transpose(0, 1).to(query_rows.dtype)


if triton is not None:

    @triton.jit
    def online_update(q, k, v, valid, m, l, acc):
        """One tile of keys/values into the running (max, sum, weighted values)."""
        s = tl.where(valid, tl.sum(k * q[None, :], axis=1), float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=0))
        p = tl.where(valid, tl.exp(s - m_new), 0.0)
        alpha = tl.exp(m - m_new)
        return (m_new, l * alpha + tl.sum(p, axis=0),
                acc * alpha + tl.sum(p[:, None] * v, axis=0))

    @triton.jit
    def attend_kept(q, d, m, l, acc, req, kv_head, limit,
                    k_ptr, stride_kb, stride_ks, stride_kh,
                    v_ptr, stride_vb, stride_vs, stride_vh,
                    block_table_ptr, stride_bt, kept_start_ptr, kept_end_ptr, cu_kept_ptr,
                    KV_BLOCK: tl.constexpr, BLOCK_N: tl.constexpr):
        """The online softmax over request ``req``'s kept positions below ``limit``,
        interval by interval, tile by tile.

        Offsets into the cache are int64: a draft layer's cache passes 2^31 elements at a
        few hundred thousand tokens, where ``block * stride`` in int32 wraps."""
        table_row = block_table_ptr + req.to(tl.int64) * stride_bt
        k_head = k_ptr + kv_head.to(tl.int64) * stride_kh
        v_head = v_ptr + kv_head.to(tl.int64) * stride_vh
        for iv in range(tl.load(cu_kept_ptr + req), tl.load(cu_kept_ptr + req + 1)):
            start = tl.load(kept_start_ptr + iv)
            end = tl.minimum(tl.load(kept_end_ptr + iv), limit)
            for n0 in range(start, end, BLOCK_N):
                pos = n0 + tl.arange(0, BLOCK_N)
                valid = pos < end
                block = tl.load(table_row + pos // KV_BLOCK, mask=valid, other=0).to(tl.int64)
                slot = (pos % KV_BLOCK).to(tl.int64)
                k_row = block * stride_kb + slot * stride_ks
                v_row = block * stride_vb + slot * stride_vs
                k = tl.load(k_head + k_row[:, None] + d[None, :], mask=valid[:, None],
                            other=0.0).to(tl.float32)
                v = tl.load(v_head + v_row[:, None] + d[None, :], mask=valid[:, None],
                            other=0.0).to(tl.float32)
                m, l, acc = online_update(q, k, v, valid, m, l, acc)
        return m, l, acc
