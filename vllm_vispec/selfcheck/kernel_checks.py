"""The Triton kernels against their PyTorch references, on this machine's device.

On CUDA this runs in the self-check's own process. Without CUDA, Triton runs only in its
interpreter, which Triton reads from ``TRITON_INTERPRET`` when kernels are defined and
which must never reach a vLLM process: the self-check then runs this module as a
subprocess of its own (``python -m vllm_vispec.selfcheck.kernel_checks --out FILE``) with
``TRITON_INTERPRET=1``. Imports torch and the kernels only, never vLLM.

The caches are built the way vLLM's backends hand them to the draft: one tensor per layer
with K and V side by side in the last dimension, viewed token-major (FlashAttention,
Triton attention) or head-major (the CPU backend), with blocks given to requests in a
shuffled order.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from dataclasses import dataclass

import torch

from .results import FAIL, PASS, CheckResult

# Worst |kernel - reference| allowed, relative to max(1, max |reference|).
TOLERANCE = {
    "compressed_attention": {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 5e-3},
    "tree_attention": {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 5e-3},
    "image_compression": {torch.float32: 2e-4, torch.bfloat16: 3e-2, torch.float16: 5e-3},
}
KERNEL_FILES = {
    "compressed_attention": "kernels/compressed_attention.py",
    "tree_attention": "kernels/tree_attention.py",
    "image_compression": "kernels/image_compression.py",
}
# --inject-fault kernels: the compressed-attention kernel gets a softmax scale this much off,
# so its output really differs from the reference's.
FAULT_SCALE = 1.05


@dataclass(frozen=True)
class Shapes:
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 64
    block_size: int = 16


def paged_cache(seq_lens: list[int], shapes: Shapes, dtype, device, g, token_major: bool):
    """(block_table, key_cache, value_cache): K and V as views of one combined per-layer
    cache, ``[blocks, block_size, kv_heads, head_dim]`` each, with vLLM-like strides."""
    from ..kernels.cases import shuffled_block_table
    block_table, num_blocks = shuffled_block_table(seq_lens, shapes.block_size, g,
                                                   spare_blocks=2)
    d, h, b = shapes.head_dim, shapes.kv_heads, shapes.block_size
    if token_major:  # [blocks, block_size, heads, K|V]
        kv = torch.randn(num_blocks, b, h, 2 * d, generator=g)
    else:  # [blocks, heads, block_size, K|V], seen as [blocks, block_size, heads, ...]
        kv = torch.randn(num_blocks, h, b, 2 * d, generator=g).transpose(1, 2)
    kv = kv.to(device, dtype)
    return block_table.to(device), kv[..., :d], kv[..., d:]


def i32(values, device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int32, device=device)


def compressed_attention_case(seq_lens, query_lens, dropped, shapes, dtype, device, seed,
                              token_major):
    """Keyword arguments of the compressed-layout attention: queries at each request's last
    ``query_lens`` positions, the kept intervals the complement of ``dropped``."""
    g = torch.Generator().manual_seed(seed)
    block_table, key_cache, value_cache = paged_cache(seq_lens, shapes, dtype, device, g,
                                                      token_major)
    token_req, positions, starts, ends, cu = [], [], [], [], [0]
    for r, (s, q) in enumerate(zip(seq_lens, query_lens)):
        token_req += [r] * q
        positions += list(range(s - q, s))
        cursor = 0
        for a, b in sorted(dropped[r]) + [(s, s)]:
            if a > cursor:
                starts.append(cursor)
                ends.append(a)
            cursor = max(cursor, b)
        cu.append(len(starts))
    query = torch.randn(len(token_req), shapes.heads, shapes.head_dim, generator=g)
    return dict(query=query.to(device, dtype), key_cache=key_cache, value_cache=value_cache,
                block_table=block_table, token_req=i32(token_req, device),
                query_positions=i32(positions, device), kept_starts=i32(starts, device),
                kept_ends=i32(ends, device), cu_kept=i32(cu, device),
                scale=shapes.head_dim ** -0.5)


def tree_attention_case(contexts, trees, shapes, dtype, device, seed, token_major):
    """Keyword arguments of tree attention: every tree row is also a query (verification)."""
    from ..kernels.cases import context_ends, tree_metadata
    g = torch.Generator().manual_seed(seed)
    block_table, key_cache, value_cache = paged_cache(context_ends(contexts), shapes, dtype,
                                                      device, g, token_major)
    meta = tree_metadata(contexts, trees)
    rows = len(meta["token_req"])

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(device, dtype)
    return dict(query=rand(rows, shapes.heads, shapes.head_dim), key_cache=key_cache,
                value_cache=value_cache, block_table=block_table,
                tree_key=rand(rows, shapes.kv_heads, shapes.head_dim),
                tree_value=rand(rows, shapes.kv_heads, shapes.head_dim),
                scale=shapes.head_dim ** -0.5,
                **{name: torch.tensor(values, device=device, dtype=torch.int64
                                      if name == "anc_bits" else torch.int32)
                   for name, values in meta.items()})


def image_compression_case(lengths, hidden, heads, num_q, dtype, device, seed):
    """Folded adaptor queries and concatenated images, as the pooling kernel takes them."""
    from ..kernels.image_compression import fold_queries
    g = torch.Generator().manual_seed(seed)
    head_dim = hidden // heads

    def w(*shape, scale=0.05):
        return (torch.randn(*shape, generator=g) * scale).to(device, dtype)
    queries = w(num_q, heads, head_dim, scale=head_dim ** -0.5)
    embeds = torch.randn(sum(lengths), hidden, generator=g).to(device, dtype)
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    return dict(embeds=embeds, cu_seqlens=i32(cu, device),
                folded=fold_queries(queries, w(hidden, hidden)), max_tokens=max(lengths))


def cases(kernel: str, dtype, device, large: bool) -> list[tuple[str, dict]]:
    """(description, kwargs) per case; ``large`` adds model-sized shapes (CUDA only: the
    interpreter would take minutes)."""
    small, big = Shapes(), Shapes(heads=32, kv_heads=8, head_dim=128, block_size=16)
    if kernel == "compressed_attention":
        out = [("decode, token-major", compressed_attention_case(
                    [40, 75], [1, 1], [[(3, 18)], [(5, 20), (40, 70)]], small, dtype, device,
                    0, token_major=True)),
               ("prefill/verify, head-major", compressed_attention_case(
                    [33, 50], [33, 4], [[(2, 17)], [(10, 26)]], small, dtype, device, 1,
                    token_major=False))]
        if large:
            out.append(("decode, 4000-token context, GQA 32/8, head_dim 128",
                        compressed_attention_case([4000, 1500], [1, 5],
                                                  [[(100, 2980)], [(0, 576)]], big, dtype,
                                                  device, 2, token_major=True)))
        return out
    if kernel == "tree_attention":
        out = [("branching tree + chain, token-major", tree_attention_case(
                    [[(0, 5), (12, 40)], [(0, 33)]], [[-1, 0, 0, 1, 1, 2, 3], [-1, 0, 1, 2]],
                    small, dtype, device, 3, token_major=True))]
        if large:
            parents = [-1] + [(i - 1) // 4 for i in range(1, 40)]  # 40 rows: bits above 31
            out.append(("40-row tree, 3000-token context, head_dim 128", tree_attention_case(
                [[(0, 3000)]], [parents], big, dtype, device, 4, token_major=True)))
        return out
    if kernel == "image_compression":
        out = [("2 images (40, 7 tokens), hidden 128", image_compression_case(
                    [40, 7], 128, 2, 2, dtype, device, 5))]
        if large:
            out.append(("2 images (2880, 577 tokens), hidden 4096", image_compression_case(
                [2880, 577], 4096, 32, 2, dtype, device, 6)))
        return out
    raise ValueError(kernel)


def run_kernel(kernel: str, kwargs: dict, fault: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(kernel output, reference output) in fp32."""
    if kernel == "compressed_attention":
        from ..kernels.compressed_attention import (compressed_paged_attention_ref,
                                                    compressed_paged_attention_triton)
        ref = compressed_paged_attention_ref(**kwargs)
        scale = kwargs["scale"] * (FAULT_SCALE if fault else 1.0)
        got = compressed_paged_attention_triton(**{**kwargs, "scale": scale})
    elif kernel == "tree_attention":
        from ..kernels.tree_attention import (tree_paged_attention_ref,
                                              tree_paged_attention_triton)
        ref = tree_paged_attention_ref(**kwargs)
        got = tree_paged_attention_triton(**kwargs)
    else:  # the kernel is the pooling; the projections after it are plain matmuls
        from ..kernels.image_compression import pool_images_ref, pool_images_triton
        images = (kwargs["folded"], kwargs["embeds"], kwargs["cu_seqlens"])
        ref = pool_images_ref(*images)
        got = pool_images_triton(*images, max_tokens=kwargs["max_tokens"])
    return got.float(), ref.float()


def check_kernel(kernel: str, dtype, device, large: bool, fault: bool) -> CheckResult:
    name = f"{kernel} {str(dtype).removeprefix('torch.')}"
    tol = TOLERANCE[kernel][dtype]
    worst, worst_allowed, descriptions = 0.0, tol, []
    try:
        for description, kwargs in cases(kernel, dtype, device, large):
            got, ref = run_kernel(kernel, kwargs, fault)
            if not torch.isfinite(got).all():
                return CheckResult("kernels", name, FAIL,
                                   f"non-finite kernel output ({description})",
                                   {"file": KERNEL_FILES[kernel], "case": description})
            err = (got - ref).abs().max().item()
            allowed = tol * max(1.0, ref.abs().max().item())
            descriptions.append(description)
            if err / allowed > worst / worst_allowed:
                worst, worst_allowed = err, allowed
    except Exception as e:  # a kernel that does not compile or launch here
        return CheckResult("kernels", name, FAIL, f"{type(e).__name__}: {e}".splitlines()[0],
                           {"file": KERNEL_FILES[kernel],
                            "traceback": traceback.format_exc()[-4000:]})
    ok = worst <= worst_allowed
    return CheckResult(
        "kernels", name, PASS if ok else FAIL,
        f"max abs err {worst:.2e} (allowed {worst_allowed:.1e}), {len(descriptions)} "
        f"case{'s' if len(descriptions) > 1 else ''}",
        {"file": KERNEL_FILES[kernel], "max_abs_err": worst, "tolerance": worst_allowed,
         "cases": descriptions, "device": str(device)})


def run_all(fault: bool = False) -> list[CheckResult]:
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    dtypes = [torch.float32, torch.bfloat16] + ([torch.float16] if cuda else [])
    return [check_kernel(kernel, dtype, device, large=cuda, fault=fault)
            for kernel in KERNEL_FILES for dtype in dtypes]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", required=True, help="where to write the results (JSON)")
    p.add_argument("--fault", action="store_true",
                   help="give the compressed-attention kernel a wrong scale (a real failure)")
    args = p.parse_args(argv)
    results = run_all(fault=args.fault)
    with open(args.out, "w") as f:
        json.dump([r.as_dict() for r in results], f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
