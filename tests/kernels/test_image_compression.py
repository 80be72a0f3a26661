"""Fused image compression vs the adaptor as written, across shapes and dtypes."""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICE

from vllm_vispec.kernels.image_compression import (compress_images, compress_images_unfused,
                                                   fold_queries, pool_images_ref,
                                                   pool_images_triton)

TOL = {torch.float32: 2e-4, torch.bfloat16: 3e-2}


def adaptor(hidden, heads, num_q, dtype, seed=0, bias=True):
    g = torch.Generator().manual_seed(seed)
    head_dim = hidden // heads

    def w(*shape, scale=0.05):
        return (torch.randn(*shape, generator=g) * scale).to(DEVICE, dtype)
    return dict(queries=w(num_q, heads, head_dim, scale=head_dim ** -0.5),
                k_weight=w(hidden, hidden), k_bias=w(hidden) if bias else None,
                v_weight=w(hidden, hidden), v_bias=w(hidden) if bias else None,
                o_weight=w(hidden, hidden))


def images(lengths, hidden, dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    embeds = torch.randn(sum(lengths), hidden, generator=g).to(DEVICE, dtype)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32,
                      device=DEVICE)
    return embeds, cu


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("head_dim,num_q,lengths", [
    (64, 2, [16]),
    (64, 2, [2880]),  # LLaVA-1.6's largest AnyRes image
    (128, 2, [577, 16, 1200]),  # several images of unequal length in one launch
    (64, 5, [100, 300]),
    (128, 17, [64]),
    (64, 65, [257]),  # 260 query rows: several row blocks
])
def test_fused_compression_matches_the_adaptor(head_dim, num_q, lengths, dtype):
    hidden = 256
    heads = hidden // head_dim
    w = adaptor(hidden, heads, num_q, dtype)
    embeds, cu = images(lengths, hidden, dtype)
    expected = compress_images_unfused(embeds.float(), cu, **{
        k: (v.float() if v is not None else None) for k, v in w.items()})
    folded = fold_queries(w["queries"], w["k_weight"])
    got = compress_images(embeds, cu, folded, num_q, w["v_weight"], w["v_bias"],
                          w["o_weight"], max_tokens=max(lengths), use_kernel=True)
    assert got.shape == (len(lengths), num_q, hidden)
    scale = expected.abs().max().item()
    assert (got.float() - expected).abs().max().item() <= TOL[dtype] * max(scale, 1.0)


@pytest.mark.parametrize("split", [32, 256])
def test_pooling_kernel_matches_its_reference(split):
    hidden, heads, num_q = 128, 2, 3
    w = adaptor(hidden, heads, num_q, torch.float32, seed=3)
    embeds, cu = images([40, 7, 129], hidden, torch.float32, seed=4)
    folded = fold_queries(w["queries"], w["k_weight"])
    ref = pool_images_ref(folded, embeds, cu)
    got = pool_images_triton(folded, embeds, cu, max_tokens=129, split=split, block_t=32)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


def test_key_bias_cancels_in_the_softmax():
    hidden, heads, num_q = 128, 2, 2
    w = adaptor(hidden, heads, num_q, torch.float32, seed=5)
    embeds, cu = images([50], hidden, torch.float32)
    with_bias = compress_images_unfused(embeds, cu, **w)
    without = compress_images_unfused(embeds, cu, **{**w, "k_bias": None})
    torch.testing.assert_close(with_bias, without, rtol=1e-5, atol=1e-6)
