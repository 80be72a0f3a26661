"""Tree paged attention: kernel vs reference vs attention written out key by key."""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICE, rehome_in_vllm_cache, shuffled_paged_cache

from vllm_vispec.kernels.cases import context_ends, tree_metadata
from vllm_vispec.kernels.tree_attention import (MAX_TREE_ROWS, ancestor_bits,
                                                tree_paged_attention_ref,
                                                tree_paged_attention_triton)

TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2}


def make_batch(context_intervals, trees, block_size=16, heads=4, kv_heads=2, head_dim=64,
               dtype=torch.float32, seed=0):
    """Requests with kept context intervals and a tree each (parent lists); every tree row
    is also a query, as in target verification."""
    g = torch.Generator().manual_seed(seed)
    block_table, key_cache, value_cache = shuffled_paged_cache(
        context_ends(context_intervals), block_size, kv_heads, head_dim, g, spare_blocks=2)
    meta = tree_metadata(context_intervals, trees)
    rows = len(meta["token_req"])
    tree_key = torch.randn(rows, kv_heads, head_dim, generator=g)
    tree_value = torch.randn(rows, kv_heads, head_dim, generator=g)
    query = torch.randn(rows, heads, head_dim, generator=g)
    index = {name: torch.tensor(values, dtype=torch.int64 if name == "anc_bits"
                                else torch.int32, device=DEVICE)
             for name, values in meta.items()}
    return dict(query=query.to(DEVICE, dtype), key_cache=key_cache.to(DEVICE, dtype),
                value_cache=value_cache.to(DEVICE, dtype), block_table=block_table.to(DEVICE),
                tree_key=tree_key.to(DEVICE, dtype), tree_value=tree_value.to(DEVICE, dtype),
                scale=head_dim ** -0.5, **index)


def written_out(batch, context_intervals, trees):
    """Each query's softmax over exactly: its request's kept positions, then the rows on
    its own path (found by walking parents, not by the bit masks)."""
    b = {k: (v.float().cpu() if torch.is_tensor(v) and v.is_floating_point()
             else v.cpu() if torch.is_tensor(v) else v) for k, v in batch.items()}
    bs = b["key_cache"].shape[1]
    group = b["query"].shape[1] // b["key_cache"].shape[2]
    out = torch.zeros_like(b["query"])
    for t in range(b["query"].shape[0]):
        r = int(b["token_req"][t])
        first = int(b["tree_start"][r])
        keys, values = [], []
        for s, e in context_intervals[r]:
            for p in range(s, e):
                blk = int(b["block_table"][r, p // bs])
                keys.append(b["key_cache"][blk, p % bs])
                values.append(b["value_cache"][blk, p % bs])
        path, node = [], t - first
        while node >= 0:
            path.append(first + node)
            node = trees[r][node]
        for row in sorted(path):
            keys.append(b["tree_key"][row])
            values.append(b["tree_value"][row])
        k = torch.stack(keys).repeat_interleave(group, dim=1)  # [n, heads, D]
        v = torch.stack(values).repeat_interleave(group, dim=1)
        scores = torch.einsum("hd,nhd->hn", b["query"][t], k) * b["scale"]
        out[t] = torch.einsum("hn,nhd->hd", scores.softmax(-1), v)
    return out


# Request 0: context with a dropped middle (the draft's compressed layout) and a branching
# tree; request 1: a chain; request 2: no context at all (a tree over an empty prefix).
CONTEXTS = [[(0, 5), (12, 40)], [(0, 33)], []]
TREES = [[-1, 0, 0, 1, 1, 2, 3], [-1, 0, 1, 2], [-1, 0, 0]]


def test_reference_matches_written_out():
    batch = make_batch(CONTEXTS, TREES)
    got = tree_paged_attention_ref(**batch)
    torch.testing.assert_close(got.cpu(), written_out(batch, CONTEXTS, TREES),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernel_matches_reference(dtype):
    batch = make_batch(CONTEXTS, TREES, dtype=dtype, seed=1)
    want = tree_paged_attention_ref(**batch).float()
    got = tree_paged_attention_triton(**batch).float()
    torch.testing.assert_close(got, want, atol=TOL[dtype], rtol=TOL[dtype])


def test_a_wider_tree_in_the_kernel():
    # 40 rows: bits above 31 must work (int64 masks).
    parents = [-1] + [max(0, i // 2 - 1) for i in range(1, 40)]
    batch = make_batch([[(0, 20)]], [parents], seed=2)
    torch.testing.assert_close(tree_paged_attention_triton(**batch),
                               tree_paged_attention_ref(**batch), atol=1e-4, rtol=1e-4)


def test_chain_equals_causal_attention():
    # A chain tree is ordinary causal attention over context + the new rows.
    batch = make_batch([[(0, 10)]], [[-1, 0, 1]], seed=3)
    got = tree_paged_attention_ref(**batch)
    ctx = [[(0, 10)]]
    torch.testing.assert_close(got.cpu(), written_out(batch, ctx, [[-1, 0, 1]]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("token_major", [True, False], ids=["token-major", "head-major"])
def test_kernel_reads_vllm_cache_views(token_major, dtype):
    # The target's cache as its backend hands it over (strided views of one tensor, both
    # physical orders); the reference reads compact copies of the same values.
    batch = make_batch(CONTEXTS, TREES, dtype=dtype, seed=4)
    key_view, value_view = rehome_in_vllm_cache(batch["key_cache"], batch["value_cache"],
                                                token_major)
    assert not key_view.is_contiguous() and key_view.stride(-1) == 1
    want = tree_paged_attention_ref(**batch).float()
    got = tree_paged_attention_triton(**{**batch, "key_cache": key_view,
                                         "value_cache": value_view}).float()
    torch.testing.assert_close(got, want, atol=TOL[dtype], rtol=TOL[dtype])


def test_ancestor_bits_validates_parents():
    assert ancestor_bits([-1, 0, 0, 1]) == [0b1, 0b11, 0b101, 0b1011]
    with pytest.raises(ValueError, match="earlier row"):
        ancestor_bits([-1, 2, 0])
    with pytest.raises(ValueError, match="at most"):
        ancestor_bits([-1] + list(range(MAX_TREE_ROWS)))
