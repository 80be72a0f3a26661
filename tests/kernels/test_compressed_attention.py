"""Draft paged attention over the compressed layout: kernel vs reference vs dense math."""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICE, rehome_in_vllm_cache, shuffled_paged_cache

from vllm_vispec.kernels.compressed_attention import (compressed_paged_attention_padded,
                                                      compressed_paged_attention_ref,
                                                      compressed_paged_attention_triton)

TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2}


def kept_intervals(seq_len, dropped):
    """Complement of the dropped intervals within [0, seq_len)."""
    out, cursor = [], 0
    for start, end in sorted(dropped):
        if start > cursor:
            out.append((cursor, min(start, seq_len)))
        cursor = max(cursor, end)
    if cursor < seq_len:
        out.append((cursor, seq_len))
    return [(s, e) for s, e in out if e > s]


def make_batch(seq_lens, query_lens, dropped, block_size, heads, kv_heads, head_dim, dtype,
               poison_dropped=False, seed=0):
    """A shuffled paged cache, block tables, and queries at each request's last positions."""
    g = torch.Generator().manual_seed(seed)
    block_table, key_cache, value_cache = shuffled_paged_cache(
        seq_lens, block_size, kv_heads, head_dim, g, spare_blocks=3)
    if poison_dropped:  # what the kernel must never read
        for r, drops in enumerate(dropped):
            for s, e in drops:
                for p in range(s, min(e, seq_lens[r])):
                    b = block_table[r, p // block_size]
                    key_cache[b, p % block_size] = float("nan")
                    value_cache[b, p % block_size] = float("nan")
    token_req, positions = [], []
    for r, (s, q) in enumerate(zip(seq_lens, query_lens)):
        token_req += [r] * q
        positions += list(range(s - q, s))
    starts, ends, cu = [], [], [0]
    for r, s in enumerate(seq_lens):
        for a, b in kept_intervals(s, dropped[r]):
            starts.append(a)
            ends.append(b)
        cu.append(len(starts))
    query = torch.randn(len(token_req), heads, head_dim, generator=g)

    def dev(t, dt=None):
        return t.to(DEVICE, dt) if dt is not None else t.to(DEVICE)
    return dict(query=dev(query, dtype), key_cache=dev(key_cache, dtype),
                value_cache=dev(value_cache, dtype), block_table=dev(block_table),
                token_req=dev(torch.tensor(token_req, dtype=torch.int32)),
                query_positions=dev(torch.tensor(positions, dtype=torch.int32)),
                kept_starts=dev(torch.tensor(starts, dtype=torch.int32)),
                kept_ends=dev(torch.tensor(ends, dtype=torch.int32)),
                cu_kept=dev(torch.tensor(cu, dtype=torch.int32)),
                scale=head_dim ** -0.5)


def dense(batch, seq_lens, dropped):
    """Attention written out position by position, the plainest statement of the rule."""
    q, kc, vc = (batch[k].float().cpu() for k in ("query", "key_cache", "value_cache"))
    bt = batch["block_table"].cpu()
    bs = kc.shape[1]
    group = q.shape[1] // kc.shape[2]
    out = torch.zeros_like(q)
    reqs, pos = batch["token_req"].tolist(), batch["query_positions"].tolist()
    for t, (r, p) in enumerate(zip(reqs, pos)):
        visible = [j for j in range(p + 1)
                   if not any(s <= j < e for s, e in dropped[r]) and j < seq_lens[r]]
        for h in range(q.shape[1]):
            k = torch.stack([kc[bt[r, j // bs], j % bs, h // group] for j in visible])
            v = torch.stack([vc[bt[r, j // bs], j % bs, h // group] for j in visible])
            w = torch.softmax(k @ q[t, h] * batch["scale"], 0)
            out[t, h] = w @ v
    return out


CASES = {
    # name: seq_lens, query_lens, dropped intervals per request
    "decode": ([40, 75, 130], [1, 1, 1], [[(3, 18)], [], [(5, 20), (40, 70)]]),
    "prefill-verify": ([33, 64, 97], [33, 4, 20], [[(2, 17)], [(10, 26)], [(0, 30), (50, 60)]]),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("head_dim,heads,kv_heads", [(64, 4, 4), (128, 4, 2)])
@pytest.mark.parametrize("case", list(CASES))
def test_kernel_matches_reference_and_dense(case, head_dim, heads, kv_heads, block_size,
                                            dtype):
    seq_lens, query_lens, dropped = CASES[case]
    batch = make_batch(seq_lens, query_lens, dropped, block_size, heads, kv_heads, head_dim,
                       dtype)
    ref = compressed_paged_attention_ref(**batch)
    got = compressed_paged_attention_triton(**batch)
    torch.testing.assert_close(got.float(), ref.float(), rtol=TOL[dtype], atol=TOL[dtype])
    if dtype == torch.float32 and block_size == 16:
        torch.testing.assert_close(ref.float().cpu(), dense(batch, seq_lens, dropped),
                                   rtol=1e-4, atol=1e-5)


def test_dropped_slots_are_never_read():
    seq_lens, query_lens, dropped = CASES["decode"]
    args = (seq_lens, query_lens, dropped, 16, 4, 4, 64, torch.float32)
    clean = compressed_paged_attention_triton(**make_batch(*args))
    poisoned = compressed_paged_attention_triton(**make_batch(*args, poison_dropped=True))
    assert torch.isfinite(poisoned).all()
    torch.testing.assert_close(poisoned, clean)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("token_major", [True, False], ids=["token-major", "head-major"])
@pytest.mark.parametrize("case", list(CASES))
def test_kernel_reads_vllm_cache_views(case, token_major, dtype):
    # K and V as the backends hand them over: strided views of one cache tensor, in both
    # physical orders; the reference reads compact copies of the same values.
    seq_lens, query_lens, dropped = CASES[case]
    batch = make_batch(seq_lens, query_lens, dropped, 16, 4, 2, 64, dtype, seed=5)
    key_view, value_view = rehome_in_vllm_cache(batch["key_cache"], batch["value_cache"],
                                                token_major)
    block_size, kv_heads, head_dim = key_view.shape[1:]
    kv_row = 2 * head_dim
    inner = (kv_heads * kv_row, kv_row) if token_major else (kv_row, block_size * kv_row)
    assert key_view.stride()[1:] == (*inner, 1) and not key_view.is_contiguous()
    ref = compressed_paged_attention_ref(**batch)
    got = compressed_paged_attention_triton(**{**batch, "key_cache": key_view,
                                               "value_cache": value_view})
    torch.testing.assert_close(got.float(), ref.float(), rtol=TOL[dtype], atol=TOL[dtype])


def padded_inputs(batch, seq_lens, extra_kept=2):
    """The batched path's inputs for ``batch``: every request's kept positions padded to
    the longest (plus ``extra_kept`` positions past the sequence, which causality must
    hide), and each query's row in the padded batch."""
    bt = batch["block_table"].cpu()
    bs = batch["key_cache"].shape[1]
    starts, ends = batch["kept_starts"].tolist(), batch["kept_ends"].tolist()
    cu = batch["cu_kept"].tolist()
    far = 1 << 20
    kept = []
    for r, s in enumerate(seq_lens):
        pos = [p for i in range(cu[r], cu[r + 1]) for p in range(starts[i], ends[i])]
        tail = list(range(s, min(s + extra_kept, bt.shape[1] * bs)))
        kept.append(pos + tail)
    width = max(len(k) for k in kept)
    pos = torch.full((len(seq_lens), width), far, dtype=torch.long)
    for r, k in enumerate(kept):
        pos[r, :len(k)] = torch.tensor(k)
    clamped = pos.clamp(max=bt.shape[1] * bs - 1)
    blocks = bt.gather(1, clamped // bs).long()
    reqs = batch["token_req"].cpu().long()
    query_lens = torch.bincount(reqs, minlength=len(seq_lens))
    first = torch.cumsum(query_lens, 0) - query_lens
    max_q = int(query_lens.max())
    rows = reqs * max_q + torch.arange(len(reqs)) - first[reqs]
    dev = batch["query"].device
    return dict(kept_blocks=blocks.to(dev), kept_offsets=(clamped % bs).to(dev),
                kept_pos=pos.to(dev), query_rows=rows.to(dev), max_query_len=max_q)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("token_major", [None, True, False],
                         ids=["compact", "token-major", "head-major"])
@pytest.mark.parametrize("head_dim,heads,kv_heads", [(64, 4, 4), (128, 4, 2), (48, 6, 3)])
@pytest.mark.parametrize("case", list(CASES))
def test_batched_torch_path_matches_reference(case, head_dim, heads, kv_heads, token_major,
                                              dtype):
    # The CPU path (one gather, one masked attention for the batch): any head size, vLLM's
    # strided cache views, positions past a sequence hidden by causality, dropped slots
    # never read (poisoned with NaN).
    seq_lens, query_lens, dropped = CASES[case]
    batch = make_batch(seq_lens, query_lens, dropped, 16, heads, kv_heads, head_dim, dtype,
                       poison_dropped=True, seed=3)
    ref = compressed_paged_attention_ref(**batch)
    caches = {}
    if token_major is not None:
        caches = dict(zip(("key_cache", "value_cache"), rehome_in_vllm_cache(
            batch["key_cache"], batch["value_cache"], token_major)))
    args = {k: v for k, v in {**batch, **caches}.items()
            if k not in ("block_table", "token_req", "kept_starts", "kept_ends", "cu_kept")}
    padded = padded_inputs(batch, seq_lens)
    got = compressed_paged_attention_padded(**args, **padded)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.float(), ref.float(), rtol=TOL[dtype], atol=TOL[dtype])
    if len(set(query_lens)) == 1:  # queries already request-major and equal: no padding
        dense = compressed_paged_attention_padded(**args, **{**padded, "query_rows": None},
                                                  blind_rows=False)
        torch.testing.assert_close(dense, got)
