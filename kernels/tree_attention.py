"""Paged attention for speculative *trees*: each query sees its request's cached context
plus the tree rows on its own root-to-node path.

Used twice: by the target to verify a drafted tree in one forward (queries = the root and
every node, tree rows = their own fresh K/V), and by the draft to expand a tree level by
level (queries = the level's nodes, tree rows = the K/V of the nodes drafted so far).

- Context: ``key_cache``/``value_cache`` ``[num_blocks, block_size, kv_heads, head_dim]``
  (any strides) and ``block_table[r, i]``, read at the request's kept positions, given as
  half-open intervals ``kept_starts/kept_ends[cu_kept[r]:cu_kept[r + 1]]`` (the target
  passes one interval ``[0, root position)``; the draft its compressed layout).
- Tree rows: ``tree_key/tree_value`` ``[rows, kv_heads, head_dim]``; request ``r`` owns
  rows ``tree_start[r] .. tree_start[r] + tree_len[r]``; query ``t`` sees row
  ``tree_start[r] + j`` when bit ``j`` of ``ancestor_bits[t]`` is set (at most 63 rows a
  request: int64 masks).

No vLLM imports: this module runs wherever torch (and, for the kernel, Triton) does.
"""

from __future__ import annotations

import torch

from ._paged import kept_positions, masked_attention
from ._triton import tl, triton

MAX_TREE_ROWS = 63


def ancestor_bits(parents: list[int]) -> list[int]:
    """Bit masks of ancestors-or-self for rows whose parents come first (-1: no parent)."""
    bits: list[int] = []
    for i, parent in enumerate(parents):
        if not -1 <= parent < i:
            raise ValueError(f"row {i}: parent {parent} must be -1 or an earlier row")
        if i >= MAX_TREE_ROWS:
            raise ValueError(f"a tree holds at most {MAX_TREE_ROWS} rows")
        bits.append((bits[parent] if parent >= 0 else 0) | (1 << i))
    return bits


def tree_paged_attention_ref(query, key_cache, value_cache, block_table, token_req,
                             kept_starts, kept_ends, cu_kept, tree_key, tree_value,
                             tree_start, tree_len, anc_bits, scale: float) -> torch.Tensor:
    """PyTorch reference. ``query`` [T, heads, D] -> [T, heads, D]."""
    out = torch.zeros_like(query)
    block_size = key_cache.shape[1]
    group = query.shape[1] // key_cache.shape[2]
    cu = cu_kept.tolist()
    starts, lens = tree_start.tolist(), tree_len.tolist()
    for r in sorted(set(token_req.tolist())):
        rows = (token_req == r).nonzero().squeeze(1)
        kept = kept_positions(kept_starts, kept_ends, cu, r, query.device)
        blocks = block_table[r, kept // block_size].long()
        tree = slice(starts[r], starts[r] + lens[r])
        keys = torch.cat([key_cache[blocks, kept % block_size], tree_key[tree]]).float()
        values = torch.cat([value_cache[blocks, kept % block_size], tree_value[tree]]).float()
        keys = keys.transpose(0, 1).repeat_interleave(group, dim=0)  # [heads, n, D]
        values = values.transpose(0, 1).repeat_interleave(group, dim=0)
        bit = torch.arange(lens[r], device=query.device)
        on_path = (anc_bits[rows][:, None] >> bit[None, :]) & 1 == 1
        visible = torch.cat([on_path.new_ones(len(rows), kept.numel()), on_path], dim=1)
        out[rows] = masked_attention(query[rows], keys, values, visible, scale)
    return out


if triton is not None:
    from ._paged import attend_kept, online_update

    @triton.jit
    def _tree_attention_kernel(
        # Strides are int64 (as in vLLM's own Triton attention): offsets below are
        # products with them and must not wrap at 2^31 elements.
        q_ptr, stride_qt: tl.int64, stride_qh: tl.int64,  # [T, heads, D]
        # [blocks, block_size, kv_heads, D]
        k_ptr, stride_kb: tl.int64, stride_ks: tl.int64, stride_kh: tl.int64,
        v_ptr, stride_vb: tl.int64, stride_vs: tl.int64, stride_vh: tl.int64,
        tk_ptr, stride_tkt: tl.int64, stride_tkh: tl.int64,  # [rows, kv_heads, D]
        tv_ptr, stride_tvt: tl.int64, stride_tvh: tl.int64,
        o_ptr, stride_ot: tl.int64, stride_oh: tl.int64,
        block_table_ptr, stride_bt: tl.int64,
        token_req_ptr, kept_start_ptr, kept_end_ptr, cu_kept_ptr,
        tree_start_ptr, tree_len_ptr, anc_ptr,
        scale,
        GROUP: tl.constexpr, KV_BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr,
        BLOCK_N: tl.constexpr, TREE_BLOCK: tl.constexpr,
    ):
        # One program per (query, head): online softmax over the kept context, then over
        # the tree rows on the query's path.
        tok = tl.program_id(0)
        head = tl.program_id(1)
        kv_head = head // GROUP
        req = tl.load(token_req_ptr + tok)
        d = tl.arange(0, HEAD_DIM)
        q_row = tok.to(tl.int64) * stride_qt + head.to(tl.int64) * stride_qh
        o_row = tok.to(tl.int64) * stride_ot + head.to(tl.int64) * stride_oh
        q = tl.load(q_ptr + q_row + d).to(tl.float32) * scale
        m = tl.full((), float("-inf"), tl.float32)
        l = tl.zeros((), tl.float32)
        acc = tl.zeros((HEAD_DIM,), tl.float32)
        m, l, acc = attend_kept(q, d, m, l, acc, req, kv_head, 2**31 - 1,
                                k_ptr, stride_kb, stride_ks, stride_kh,
                                v_ptr, stride_vb, stride_vs, stride_vh,
                                block_table_ptr, stride_bt, kept_start_ptr, kept_end_ptr,
                                cu_kept_ptr, KV_BLOCK, BLOCK_N)
        first = tl.load(tree_start_ptr + req)
        count = tl.load(tree_len_ptr + req)
        bits = tl.load(anc_ptr + tok)
        j = tl.arange(0, TREE_BLOCK)
        on_path = (j < count) & (((bits >> j.to(tl.int64)) & 1) == 1)
        row = (first + j).to(tl.int64)
        k_row = row * stride_tkt + kv_head.to(tl.int64) * stride_tkh
        v_row = row * stride_tvt + kv_head.to(tl.int64) * stride_tvh
        k = tl.load(tk_ptr + k_row[:, None] + d[None, :], mask=on_path[:, None],
                    other=0.0).to(tl.float32)
        v = tl.load(tv_ptr + v_row[:, None] + d[None, :], mask=on_path[:, None],
                    other=0.0).to(tl.float32)
        m, l, acc = online_update(q, k, v, on_path, m, l, acc)
        out = tl.where(l > 0, acc / tl.maximum(l, 1e-30), 0.0)
        tl.store(o_ptr + o_row + d, out.to(o_ptr.dtype.element_ty))


def tree_paged_attention_triton(query, key_cache, value_cache, block_table, token_req,
                                kept_starts, kept_ends, cu_kept, tree_key, tree_value,
                                tree_start, tree_len, anc_bits, scale: float,
                                block_n: int = 32) -> torch.Tensor:
    num_tokens, heads, head_dim = query.shape
    out = torch.empty_like(query)
    if num_tokens == 0:
        return out
    _tree_attention_kernel[(num_tokens, heads)](
        query, query.stride(0), query.stride(1),
        key_cache, key_cache.stride(0), key_cache.stride(1), key_cache.stride(2),
        value_cache, value_cache.stride(0), value_cache.stride(1), value_cache.stride(2),
        tree_key, tree_key.stride(0), tree_key.stride(1),
        tree_value, tree_value.stride(0), tree_value.stride(1),
        out, out.stride(0), out.stride(1),
        block_table, block_table.stride(0),
        token_req, kept_starts, kept_ends, cu_kept, tree_start, tree_len, anc_bits,
        scale,
        GROUP=heads // key_cache.shape[2], KV_BLOCK=key_cache.shape[1], HEAD_DIM=head_dim,
        BLOCK_N=block_n, TREE_BLOCK=64,
    )
    return out
