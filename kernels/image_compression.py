"""Fused image compression: ViSpec's image adaptor with its key projection folded away.

The adaptor is one cross-attention from ``num_q`` learned queries ``q`` [num_q, heads, D]
over an image's embeddings ``E`` [n, H]: ``k = E W_k^T + b_k``, ``v = E W_v^T + b_v``,
``out = o_proj(softmax(q k^T / sqrt(D)) v)``. Because the queries are constants:

- ``q·k`` = ``(q W_k[h]) · E`` + a constant per query, and the constant cancels in the
  softmax: the *folded queries* ``Q = q W_k / sqrt(D)`` [heads * num_q, H] are computed
  once at load, and the scores are ``Q E^T`` straight from the image embeddings;
- ``softmax · v`` = ``W_v[h] (softmax · E) + b_v`` (the weights sum to one): the value and
  output projections apply to ``heads * num_q`` pooled rows instead of ``n`` image rows.

The kernel computes ``pooled = softmax(Q E^T) E`` per image, reading each image's
embeddings from memory twice per row block (scores, then pooling) and nothing else of
size ``n``. Images of any lengths go in one launch, concatenated, with ``cu_seqlens``.

No vLLM imports: this module runs wherever torch (and, for the kernel, Triton) does.
"""

from __future__ import annotations

import torch

from ._triton import tl, triton, triton_usable


def fold_queries(queries: torch.Tensor, k_weight: torch.Tensor) -> torch.Tensor:
    """``queries`` [num_q, heads, D], ``k_weight`` [heads * D, H] -> [heads * num_q, H],
    row ``h * num_q + i``, scaled by ``1 / sqrt(D)``."""
    num_q, heads, head_dim = queries.shape
    w = k_weight.float().view(heads, head_dim, -1)
    folded = torch.einsum("ihd,hdc->hic", queries.float(), w) * head_dim ** -0.5
    return folded.reshape(heads * num_q, -1)


def pool_images_ref(folded: torch.Tensor, embeds: torch.Tensor,
                    cu_seqlens: torch.Tensor) -> torch.Tensor:
    """``softmax(Q E^T) E`` per image: [num_images, rows, H] in fp32."""
    out = []
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        e = embeds[start:end].float()
        out.append(torch.softmax(folded.float() @ e.T, dim=-1) @ e)
    return torch.stack(out)


def compress_images_unfused(embeds: torch.Tensor, cu_seqlens: torch.Tensor, queries,
                            k_weight, k_bias, v_weight, v_bias, o_weight) -> torch.Tensor:
    """The adaptor as written (projections over every image row): [num_images, num_q, H]."""
    num_q, heads, head_dim = queries.shape
    outs = []
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        e = embeds[start:end]
        k = torch.nn.functional.linear(e, k_weight, k_bias).view(-1, heads, head_dim)
        v = torch.nn.functional.linear(e, v_weight, v_bias).view(-1, heads, head_dim)
        pooled = torch.nn.functional.scaled_dot_product_attention(
            queries.to(e.dtype).transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1))
        outs.append(torch.nn.functional.linear(pooled.transpose(0, 1).reshape(num_q, -1),
                                               o_weight))
    return torch.stack(outs)


def project_pooled(pooled: torch.Tensor, num_q: int, v_weight, v_bias,
                   o_weight) -> torch.Tensor:
    """[num_images, heads * num_q, H] pooled rows -> adaptor output [num_images, num_q, H]."""
    images, rows, hidden = pooled.shape
    heads = rows // num_q
    head_dim = v_weight.shape[0] // heads
    p = pooled.view(images, heads, num_q, hidden).to(v_weight.dtype)
    w_v = v_weight.view(heads, head_dim, hidden)
    v = torch.einsum("bhic,hdc->bihd", p, w_v)
    if v_bias is not None:
        v = v + v_bias.view(heads, head_dim)
    return torch.nn.functional.linear(v.reshape(images, num_q, heads * head_dim), o_weight)


if triton is not None:

    @triton.jit
    def _pool_partial_kernel(
        # Offsets are int64: the embeddings of a batch of images, the scratch and the
        # partials can pass 2^31 elements, where int32 products wrap.
        q_ptr, stride_qr: tl.int64,  # folded queries [rows, H] fp32
        e_ptr, stride_et: tl.int64,  # embeddings [tokens, H]
        cu_ptr,  # [images + 1]
        s_ptr,  # scratch scores [images, splits, BLOCK_R, SPLIT] fp32
        acc_ptr,  # partial pooled [images, splits, rows, H] fp32
        m_ptr, l_ptr,  # partial max / sum [images, splits, rows] fp32
        rows, hidden, num_splits,
        SPLIT: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_T: tl.constexpr,
        BLOCK_H: tl.constexpr,
    ):
        # One program per (image, split of its tokens, block of query rows).
        img = tl.program_id(0)
        split = tl.program_id(1)
        rblk = tl.program_id(2)
        begin = tl.load(cu_ptr + img)
        stop = tl.load(cu_ptr + img + 1)
        t_lo = begin + split * SPLIT
        t_hi = tl.minimum(stop, t_lo + SPLIT)
        r = rblk * BLOCK_R + tl.arange(0, BLOCK_R)
        r_ok = r < rows
        q_rows = q_ptr + r.to(tl.int64) * stride_qr
        part = img.to(tl.int64) * num_splits + split  # this program's (image, split)
        scratch = s_ptr + (part * tl.num_programs(2) + rblk) * BLOCK_R * SPLIT
        h = tl.arange(0, BLOCK_H)
        m = tl.full((BLOCK_R,), float("-inf"), tl.float32)
        # Pass 1: scores (full-H dot products) into scratch, running max.
        for t0 in range(t_lo, t_hi, BLOCK_T):
            t = t0 + tl.arange(0, BLOCK_T)
            t_ok = t < t_hi
            s = tl.zeros((BLOCK_R, BLOCK_T), tl.float32)
            for h0 in range(0, hidden, BLOCK_H):
                h_ok = (h0 + h) < hidden
                q = tl.load(q_rows[:, None] + (h0 + h)[None, :],
                            mask=r_ok[:, None] & h_ok[None, :], other=0.0)
                e = tl.load(e_ptr + (t.to(tl.int64) * stride_et)[:, None] + (h0 + h)[None, :],
                            mask=t_ok[:, None] & h_ok[None, :], other=0.0).to(tl.float32)
                s += tl.dot(q, tl.trans(e), input_precision="ieee")
            s = tl.where(t_ok[None, :], s, float("-inf"))
            tl.store(scratch + tl.arange(0, BLOCK_R)[:, None] * SPLIT
                     + (t - t_lo)[None, :], s)
            m = tl.maximum(m, tl.max(s, axis=1))
        # Normaliser of this split.
        l = tl.zeros((BLOCK_R,), tl.float32)
        for t0 in range(t_lo, t_hi, BLOCK_T):
            t = t0 + tl.arange(0, BLOCK_T)
            s = tl.load(scratch + tl.arange(0, BLOCK_R)[:, None] * SPLIT
                        + (t - t_lo)[None, :])
            l += tl.sum(tl.where((t < t_hi)[None, :], tl.exp(s - m[:, None]), 0.0), axis=1)
        # Pass 2: pooled rows, one H chunk at a time.
        base = part * rows
        for h0 in range(0, hidden, BLOCK_H):
            h_ok = (h0 + h) < hidden
            acc = tl.zeros((BLOCK_R, BLOCK_H), tl.float32)
            for t0 in range(t_lo, t_hi, BLOCK_T):
                t = t0 + tl.arange(0, BLOCK_T)
                t_ok = t < t_hi
                s = tl.load(scratch + tl.arange(0, BLOCK_R)[:, None] * SPLIT
                            + (t - t_lo)[None, :])
                p = tl.where(t_ok[None, :], tl.exp(s - m[:, None]), 0.0)
                e = tl.load(e_ptr + (t.to(tl.int64) * stride_et)[:, None] + (h0 + h)[None, :],
                            mask=t_ok[:, None] & h_ok[None, :], other=0.0).to(tl.float32)
                acc += tl.dot(p, e, input_precision="ieee")
            tl.store(acc_ptr + (base + r)[:, None] * hidden + (h0 + h)[None, :], acc,
                     mask=r_ok[:, None] & h_ok[None, :])
        tl.store(m_ptr + base + r, m, mask=r_ok)
        tl.store(l_ptr + base + r, l, mask=r_ok)


def pool_images_triton(folded: torch.Tensor, embeds: torch.Tensor, cu_seqlens: torch.Tensor,
                       max_tokens: int, split: int = 256, block_r: int = 64,
                       block_t: int = 32, block_h: int = 64) -> torch.Tensor:
    """Kernel version of :func:`pool_images_ref` (``max_tokens``: the longest image)."""
    rows, hidden = folded.shape
    images = cu_seqlens.numel() - 1
    splits = max(1, -(-max_tokens // split))
    row_blocks = -(-rows // block_r)
    dev = embeds.device
    scratch = torch.empty(images * splits * row_blocks * block_r * split, device=dev,
                          dtype=torch.float32)
    acc = torch.empty(images, splits, rows, hidden, device=dev, dtype=torch.float32)
    m = torch.empty(images, splits, rows, device=dev, dtype=torch.float32)
    l = torch.empty_like(m)
    folded = folded.float().contiguous()
    embeds = embeds.contiguous()
    _pool_partial_kernel[(images, splits, row_blocks)](
        folded, folded.stride(0), embeds, embeds.stride(0), cu_seqlens, scratch, acc, m, l,
        rows, hidden, splits,
        SPLIT=split, BLOCK_R=block_r, BLOCK_T=block_t, BLOCK_H=block_h)
    # Combine the splits (flash-decoding style): tiny, [images, splits, rows].
    m_max = m.max(dim=1, keepdim=True).values
    w = torch.exp(m - m_max).nan_to_num(0.0)  # empty splits have m = -inf
    return (acc * w[..., None]).sum(1) / (l * w).sum(1)[..., None]


def compress_images(embeds: torch.Tensor, cu_seqlens: torch.Tensor, folded: torch.Tensor,
                    num_q: int, v_weight, v_bias, o_weight, max_tokens: int | None = None,
                    use_kernel: bool | None = None) -> torch.Tensor:
    """The adaptor's output for every image: [num_images, num_q, H]."""
    if use_kernel is None:
        use_kernel = triton_usable(embeds)
    if use_kernel:
        if max_tokens is None:
            max_tokens = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
        pooled = pool_images_triton(folded, embeds, cu_seqlens, max_tokens)
    else:
        pooled = pool_images_ref(folded, embeds, cu_seqlens)
    return project_pooled(pooled, num_q, v_weight, v_bias, o_weight)
