"""Offsets past 2^31 elements: every kernel must address in 64 bits.

A draft layer's paged cache passes 2^31 elements at a few hundred thousand tokens. Here a
request's blocks sit at the top of a cache of more than 2^32 elements; only those blocks
are written, so the rest is never touched (on Linux, untouched pages of torch.empty cost
no memory). Their offsets lie in [2^32, 2^32 + 2^31): int32 arithmetic wraps them back to
other blocks of the same cache, so int32 addressing reads the wrong (zero) values and the
comparison with the reference fails instead of faulting.
"""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICE, kernel_views, vllm_kv_cache

from vllm_vispec.kernels.compressed_attention import (compressed_paged_attention_ref,
                                                      compressed_paged_attention_triton)
from vllm_vispec.kernels.image_compression import pool_images_ref, pool_images_triton
from vllm_vispec.kernels.tree_attention import (ancestor_bits, tree_paged_attention_ref,
                                                tree_paged_attention_triton)

WRAP = 2**32  # int32 offsets at or past this come back as small non-negative ones
BLOCK_SIZE, KV_HEADS, HEADS, HEAD_DIM = 16, 2, 4, 64
BLOCK_ELEMENTS = BLOCK_SIZE * KV_HEADS * 2 * HEAD_DIM
# Just enough blocks that the last few start beyond 2^32 elements (bf16: 8 GiB, untouched).
NUM_BLOCKS = WRAP // BLOCK_ELEMENTS + 8
SEQ_LEN = 3 * BLOCK_SIZE + 5
TOL = 2e-2  # bf16 cache and queries; the references compute in fp32

pytestmark = pytest.mark.skipif(
    DEVICE == "cuda" and torch.cuda.mem_get_info()[0] < 12 * 2**30,
    reason="each test allocates about 8 GiB on the device")


def high_block_cache(token_major, seed):
    """K/V views of a vLLM-style cache over more than 2^32 elements, with one request's
    blocks at the highest ids (shuffled) and only those written.

    Returns (block_table, key_cache, value_cache, generator)."""
    g = torch.Generator().manual_seed(seed)
    blocks = NUM_BLOCKS - 1 - torch.randperm(-(-SEQ_LEN // BLOCK_SIZE), generator=g)
    kv = vllm_kv_cache(NUM_BLOCKS, BLOCK_SIZE, KV_HEADS, HEAD_DIM, torch.bfloat16,
                       token_major)
    for b in blocks.tolist():
        kv[b] = torch.randn(kv.shape[1:], generator=g).to(kv)
    key_cache, value_cache = kernel_views(kv)
    assert WRAP <= int(blocks.min()) * key_cache.stride(0) < WRAP + 2**31 - BLOCK_ELEMENTS
    block_table = blocks[None].to(DEVICE, torch.int32)
    return block_table, key_cache, value_cache, g


def i32(values):
    return torch.tensor(values, dtype=torch.int32, device=DEVICE)


@pytest.mark.parametrize("token_major", [True, False], ids=["token-major", "head-major"])
def test_compressed_attention_past_2_32_elements(token_major):
    block_table, key_cache, value_cache, g = high_block_cache(token_major, seed=0)
    positions = list(range(SEQ_LEN - 4, SEQ_LEN))  # a verify step: 4 queries
    batch = dict(query=torch.randn(len(positions), HEADS, HEAD_DIM, generator=g)
                 .to(DEVICE, torch.bfloat16),
                 key_cache=key_cache, value_cache=value_cache, block_table=block_table,
                 token_req=i32([0] * len(positions)), query_positions=i32(positions),
                 kept_starts=i32([0, 20]), kept_ends=i32([5, SEQ_LEN]), cu_kept=i32([0, 2]),
                 scale=HEAD_DIM ** -0.5)
    want = compressed_paged_attention_ref(**batch).float()
    got = compressed_paged_attention_triton(**batch).float()
    assert want.abs().max() > 0.05  # the written blocks were read, not zero pages
    torch.testing.assert_close(got, want, rtol=TOL, atol=TOL)


@pytest.mark.parametrize("token_major", [True, False], ids=["token-major", "head-major"])
def test_tree_attention_past_2_32_elements(token_major):
    block_table, key_cache, value_cache, g = high_block_cache(token_major, seed=1)
    parents = [-1, 0, 0, 1, 2]
    rows = len(parents)

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(DEVICE, torch.bfloat16)
    batch = dict(query=rand(rows, HEADS, HEAD_DIM), key_cache=key_cache,
                 value_cache=value_cache, block_table=block_table,
                 token_req=i32([0] * rows), kept_starts=i32([0]), kept_ends=i32([SEQ_LEN]),
                 cu_kept=i32([0, 1]), tree_key=rand(rows, KV_HEADS, HEAD_DIM),
                 tree_value=rand(rows, KV_HEADS, HEAD_DIM), tree_start=i32([0]),
                 tree_len=i32([rows]),
                 anc_bits=torch.tensor(ancestor_bits(parents), dtype=torch.int64,
                                       device=DEVICE),
                 scale=HEAD_DIM ** -0.5)
    want = tree_paged_attention_ref(**batch).float()
    got = tree_paged_attention_triton(**batch).float()
    torch.testing.assert_close(got, want, rtol=TOL, atol=TOL)


def test_image_pooling_past_2_32_elements():
    # An image whose embedding rows start beyond 2^32 elements of the batch's embeddings
    # (the rows before it stand for earlier images and are not pooled here).
    hidden, length = 256, 40
    start = WRAP // hidden + 8
    embeds = torch.empty(start + length + 8, hidden, dtype=torch.bfloat16, device=DEVICE)
    g = torch.Generator().manual_seed(2)
    embeds[start:start + length] = torch.randn(length, hidden, generator=g).to(embeds)
    folded = (torch.randn(6, hidden, generator=g) * hidden ** -0.5).to(DEVICE)
    cu = i32([start, start + length])
    want = pool_images_ref(folded, embeds, cu)
    got = pool_images_triton(folded, embeds, cu, max_tokens=length, split=32)
    assert want.abs().max() > 0.05
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
