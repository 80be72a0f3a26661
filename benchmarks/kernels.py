"""Kernel benchmarks: time and bytes read of ViSpec's compressed-image steps.

1. Image compression: the adaptor as written (K/V projections over every image row)
   against the folded path (scores straight from the embeddings, V/O projections on the
   pooled rows), in PyTorch and, on CUDA, with the fused Triton kernel.
2. Draft attention: over the compressed layout (text + one slot per image) against
   attention over the full, uncompressed KV, for several text and image lengths.
3. Tree attention in the target's verification step: the paper's tree (the root + 29
   nodes) of every request over its cached context, the Triton tree kernel against its
   PyTorch reference and against dense masked attention over the same keys (what an
   attention with a custom mask would cost), for several context lengths and batches.

Sizes default to LLaVA-1.6-7B (H 4096, 32 heads, 2,880 image tokens) and Qwen2.5-VL-7B
(H 3584, 28 heads). On a machine without CUDA the Triton kernels do not run (Triton has no
CPU backend); the PyTorch paths still do, at the same sizes. Writes JSON, e.g.

    python benchmarks/kernels.py --out benchmarks/results/kernels-cpu.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch


def _kernels_from_checkout() -> None:
    """On a machine with torch and Triton only (a GPU box, nothing installed): the
    kernels package from this checkout, under its installed name. Loaded by path: this
    script is itself called ``kernels``."""
    try:
        import vllm_vispec.kernels  # noqa: F401  (installed)
        return
    except ImportError:
        pass
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root))
    import vllm_vispec
    spec = importlib.util.spec_from_file_location(
        "vllm_vispec.kernels", root / "kernels" / "__init__.py",
        submodule_search_locations=[str(root / "kernels")])
    module = importlib.util.module_from_spec(spec)
    sys.modules["vllm_vispec.kernels"] = module
    spec.loader.exec_module(module)
    vllm_vispec.kernels = module


_kernels_from_checkout()

from vllm_vispec.kernels._triton import triton_usable  # noqa: E402
from vllm_vispec.kernels.compressed_attention import (  # noqa: E402
    compressed_paged_attention_ref, compressed_paged_attention_triton)
from vllm_vispec.kernels.image_compression import (  # noqa: E402
    compress_images, compress_images_unfused, fold_queries)
from vllm_vispec.kernels.tree_attention import (  # noqa: E402
    ancestor_bits, tree_paged_attention_ref, tree_paged_attention_triton)

# The paper's tree as breadth-first parents (root = row 0): the root's top 8, then three
# expansions of the best 8 nodes, 29 nodes kept; the shape below is one such tree.
PAPER_TREE = [-1] + [0] * 8 + [1] * 4 + [2] * 3 + [3] * 2 + [4] + [9] * 3 + [10] * 2 + \
    [13] * 2 + [11] + [20] * 2 + [21]

MODELS = {
    "llava-v1.6-vicuna-7b": dict(hidden=4096, heads=32, image_tokens=2880),
    "qwen2.5-vl-7b": dict(hidden=3584, heads=28, image_tokens=1296),
}


def timed(fn, repeats: int) -> float:
    """Median seconds of ``fn`` (after one warm-up call)."""
    fn()
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    times = []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_compression(model: str, dims: dict, num_q: int, dtype, device, repeats: int):
    h, heads, n = dims["hidden"], dims["heads"], dims["image_tokens"]
    g = torch.Generator().manual_seed(0)

    def rnd(*shape, scale=0.02):
        return (torch.randn(*shape, generator=g) * scale).to(device, dtype)
    w = dict(queries=rnd(num_q, heads, h // heads, scale=(h // heads) ** -0.5),
             k_weight=rnd(h, h), k_bias=rnd(h), v_weight=rnd(h, h), v_bias=rnd(h),
             o_weight=rnd(h, h))
    embeds = rnd(n, h, scale=1.0)
    cu = torch.tensor([0, n], dtype=torch.int32, device=device)
    folded = fold_queries(w["queries"], w["k_weight"])
    size = torch.tensor([], dtype=dtype).element_size()
    weights = 3 * h * h * size
    rows = heads * num_q
    out = {"model": model, "num_q": num_q, "image_tokens": n, "dtype": str(dtype)}
    out["unfused"] = dict(
        seconds=timed(lambda: compress_images_unfused(embeds, cu, **w), repeats),
        bytes_read=n * h * size + weights + 2 * n * h * size)  # E, W_k/W_v/W_o, K and V
    out["folded_torch"] = dict(
        seconds=timed(lambda: compress_images(embeds, cu, folded, num_q, w["v_weight"],
                                              w["v_bias"], w["o_weight"], n,
                                              use_kernel=False), repeats),
        bytes_read=2 * n * h * size + 2 * h * h * size + rows * h * 4)
    if triton_usable(embeds):
        out["fused_triton"] = dict(
            seconds=timed(lambda: compress_images(embeds, cu, folded, num_q, w["v_weight"],
                                                  w["v_bias"], w["o_weight"], n,
                                                  use_kernel=True), repeats),
            bytes_read=out["folded_torch"]["bytes_read"])
    for key in ("folded_torch", "fused_triton"):
        if key in out:
            out[key]["speedup_vs_unfused"] = out["unfused"]["seconds"] / out[key]["seconds"]
    return out


def attention_batch(dims: dict, text: int, image: int, batch: int, dtype, device,
                    block_size: int = 16):
    """Decode step: one query per request; each request = text + image + text."""
    heads, hd = dims["heads"], dims["hidden"] // dims["heads"]
    seq = text + image
    blocks = -(-seq // block_size)
    g = torch.Generator().manual_seed(1)
    kc = torch.randn(batch * blocks, block_size, heads, hd, generator=g).to(device, dtype)
    vc = torch.randn_like(kc)
    table = torch.arange(batch * blocks, dtype=torch.int32).view(batch, blocks).to(device)
    first = text // 2  # the image sits in the middle of the text
    compressed = [(0, first), (first + image - 1, seq)]  # keeps one image slot

    def flat(intervals):
        starts = [a for _ in range(batch) for a, _ in intervals]
        ends = [b for _ in range(batch) for _, b in intervals]
        cu = [i * len(intervals) for i in range(batch + 1)]
        return [torch.tensor(x, dtype=torch.int32, device=device) for x in (starts, ends, cu)]
    common = dict(query=torch.randn(batch, heads, hd, generator=g).to(device, dtype),
                  key_cache=kc, value_cache=vc, block_table=table,
                  token_req=torch.arange(batch, dtype=torch.int32, device=device),
                  query_positions=torch.full((batch,), seq - 1, dtype=torch.int32,
                                             device=device),
                  scale=hd ** -0.5)
    return common, flat(compressed), flat([(0, seq)]), seq


def bench_attention(model: str, dims: dict, text: int, image: int, batch: int, dtype, device,
                    repeats: int):
    common, comp, full, seq = attention_batch(dims, text, image, batch, dtype, device)
    size = torch.tensor([], dtype=dtype).element_size()
    per_pos = 2 * dims["hidden"] * size  # K and V of one position
    kept = text + 1
    out = {"model": model, "text_tokens": text, "image_tokens": image, "batch": batch,
           "dtype": str(dtype),
           "compressed_bytes_read": batch * kept * per_pos,
           "full_bytes_read": batch * seq * per_pos}
    impls = {"torch": compressed_paged_attention_ref}
    if triton_usable(common["query"]):
        impls["triton"] = compressed_paged_attention_triton
    for name, fn in impls.items():
        out[f"compressed_{name}_s"] = timed(
            lambda: fn(**common, kept_starts=comp[0], kept_ends=comp[1], cu_kept=comp[2]),
            repeats)
        out[f"full_{name}_s"] = timed(
            lambda: fn(**common, kept_starts=full[0], kept_ends=full[1], cu_kept=full[2]),
            repeats)
    return out


def tree_batch(dims: dict, context: int, batch: int, dtype, device, block_size: int = 16):
    """A verification step: each request's root + paper tree over ``context`` cached
    positions."""
    heads, hd = dims["heads"], dims["hidden"] // dims["heads"]
    rows = len(PAPER_TREE)
    blocks = -(-context // block_size)
    g = torch.Generator().manual_seed(2)

    def rnd(*shape):
        return torch.randn(*shape, generator=g).to(device, dtype)
    bits = ancestor_bits(PAPER_TREE)

    def i32(values):
        return torch.tensor(values, dtype=torch.int32, device=device)
    return dict(
        query=rnd(batch * rows, heads, hd),
        key_cache=rnd(batch * blocks, block_size, heads, hd),
        value_cache=rnd(batch * blocks, block_size, heads, hd),
        block_table=torch.arange(batch * blocks, dtype=torch.int32,
                                 device=device).view(batch, blocks),
        token_req=i32([r for r in range(batch) for _ in range(rows)]),
        kept_starts=i32([0] * batch), kept_ends=i32([context] * batch),
        cu_kept=i32(list(range(batch + 1))),
        tree_key=rnd(batch * rows, heads, hd), tree_value=rnd(batch * rows, heads, hd),
        tree_start=i32([r * rows for r in range(batch)]), tree_len=i32([rows] * batch),
        anc_bits=torch.tensor(bits * batch, dtype=torch.int64, device=device),
        scale=hd ** -0.5)


def dense_masked_attention(query, key_cache, value_cache, block_table, tree_key, tree_value,
                           anc_bits, scale, context: int, batch: int, **_):
    """The same rows by one masked scaled_dot_product_attention per request over its
    gathered context and tree keys (an attention backend with a custom mask)."""
    rows = len(PAPER_TREE)
    bits = anc_bits[:rows]
    on_path = (bits[:, None] >> torch.arange(rows, device=bits.device)[None]) & 1 == 1
    mask = torch.cat([on_path.new_ones(rows, context), on_path], dim=1)
    out = []
    for r in range(batch):
        k = torch.cat([key_cache[block_table[r]].flatten(0, 1)[:context],
                       tree_key[r * rows:(r + 1) * rows]]).transpose(0, 1)
        v = torch.cat([value_cache[block_table[r]].flatten(0, 1)[:context],
                       tree_value[r * rows:(r + 1) * rows]]).transpose(0, 1)
        q = query[r * rows:(r + 1) * rows].transpose(0, 1)
        out.append(torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, scale=scale).transpose(0, 1))
    return torch.cat(out)


def bench_tree(model: str, dims: dict, context: int, batch: int, dtype, device,
               repeats: int):
    args = tree_batch(dims, context, batch, dtype, device)
    out = {"model": model, "context_tokens": context, "batch": batch,
           "tree_rows": len(PAPER_TREE), "dtype": str(dtype)}
    out["dense_masked_torch_s"] = timed(
        lambda: dense_masked_attention(**args, context=context, batch=batch), repeats)
    out["reference_torch_s"] = timed(lambda: tree_paged_attention_ref(**args), repeats)
    if triton_usable(args["query"]):
        out["triton_s"] = timed(lambda: tree_paged_attention_triton(**args), repeats)
        out["triton_vs_dense"] = out["dense_masked_torch_s"] / out["triton_s"]
        ref = tree_paged_attention_ref(**args).float()
        out["triton_max_abs_diff"] = float(
            (tree_paged_attention_triton(**args).float() - ref).abs().max())
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="default: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per case (median)")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = p.parse_args(argv)
    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device == "cuda" else "float32"))
    device_name = (torch.cuda.get_device_name() if args.device == "cuda"
                   else f"CPU ({platform.processor() or platform.machine()}, "
                        f"{torch.get_num_threads()} threads)")
    results = {"device": device_name, "torch": torch.__version__,
               "triton_kernels_ran": args.device == "cuda", "compression": [],
               "attention": [], "tree_attention": []}
    for model in args.models:
        dims = MODELS[model]
        for num_q in (2, 17):
            r = bench_compression(model, dims, num_q, dtype, args.device, args.repeats)
            results["compression"].append(r)
            print(json.dumps(r))
        for text, image in ((128, 576), (128, 2880), (1024, 576), (1024, 2880)):
            r = bench_attention(model, dims, text, image, 8, dtype, args.device, args.repeats)
            results["attention"].append(r)
            print(json.dumps(r))
        for context, batch in ((1024, 1), (4096, 1), (4096, 4), (16384, 1)):
            r = bench_tree(model, dims, context, batch, dtype, args.device, args.repeats)
            results["tree_attention"].append(r)
            print(json.dumps(r))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
