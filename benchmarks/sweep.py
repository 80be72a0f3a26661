"""Speculative methods against vLLM without speculation, across concurrency, in one run.

For each configuration (no speculation, ngram, a text-only EAGLE draft, vispec, each at
the ``num_speculative_tokens`` given) one offline engine serves the same held-out image
prompts at each concurrency level (closed loop: a new request as soon as one finishes).
Recorded per level: output tokens/s, TTFT and TPOT (median, p99), vLLM's acceptance length
and per-position acceptance, and whether the greedy text equals the run without
speculation. Writes ``OUT/results.json``, ``OUT/table.md`` and PNG plots.

Quick mode (about 10 minutes on 2 CPU cores, the trained demo target):

    python benchmarks/sweep.py --quick --out benchmarks/results/sweep-quick

A GPU user with the published checkpoints (prompts from the demo domain or a dataset):

    python benchmarks/sweep.py --target llava-hf/llava-v1.6-vicuna-7b-hf \\
        --method none --method ngram \\
        --method vispec=JLKang/ViSpec-llava-v1.6-vicuna-7b-hf -k 1 2 3 4 5 \\
        --dataset mmstar --concurrency 1 2 4 8 16 32 64 --dtype bfloat16 \\
        --out benchmarks/results/sweep-llava-7b

``--served`` runs the same through ``vllm serve`` (a server per configuration, streaming
OpenAI chat requests from a client pool of each concurrency). For vLLM's own load
generator on a served vispec model, ``vllm bench serve`` works as for any model (README).

Speed ratios are only meaningful within one run (same machine, same prompts).
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import time
from pathlib import Path

import common
from common import parse_method, parse_tree, resolve_target, speculative_config
from datasets_local import load_prompts
from offline_load import run_level

QUICK = dict(methods=["none", "ngram", "eagle=demo", "vispec=demo"], ks=[3],
             vispec_ks=[1, 2, 3, 4, 5], concurrency=[1, 4, 16], num_prompts=16,
             max_tokens=96)


def configurations(methods: list[str], ks: list[int], vispec_ks: list[int] | None):
    for method in methods:
        name, _ = parse_method(method)
        if name == "none":
            yield method, 0
            continue
        if name == "vispec-tree":  # k is the tree's chain fallback, unused here
            yield method, common.TREE["depth"]
            continue
        for k in (vispec_ks if name == "vispec" and vispec_ks else ks):
            yield method, k


def run_levels(run_one, method: str, k: int, prompts, levels: list[int], args) -> dict:
    """Each concurrency level through ``run_one(requests, concurrency)``; rows and the
    per-prompt outputs (kept apart for the comparison with no speculation)."""
    rows, ids = [], {}
    for c in levels:
        # Enough requests that the loop runs at full concurrency most of the time.
        n = max(len(prompts), 2 * c) if args.num_prompts is None else args.num_prompts
        level = run_one([prompts[i % len(prompts)] for i in range(n)], c)
        rows.append(level.to_dict())
        ids[c] = level.outputs
        print(json.dumps({"method": method, "k": k, **{key: rows[-1][key] for key in (
            "concurrency", "output_tokens_per_s", "acceptance_length")}}), flush=True)
    return {"method": method, "num_speculative_tokens": k, "levels": rows, "_ids": ids}


def run_configuration(target: str, method: str, k: int, prompts, levels: list[int],
                      args) -> dict:
    from vllm import LLM, SamplingParams
    common.TREE.update(args.tree or {})  # a spawned process starts from the defaults
    started = time.perf_counter()
    llm = LLM(model=target, dtype=args.dtype, max_model_len=args.max_model_len,
              enforce_eager=args.enforce_eager,
              limit_mm_per_prompt={"image": args.max_images},
              mm_processor_kwargs=args.mm_kwargs or None,
              max_num_seqs=max(levels), disable_log_stats=False, seed=0,
              speculative_config=speculative_config(method, k),
              **({"max_num_batched_tokens": args.max_num_batched_tokens}
                 if args.max_num_batched_tokens else {}))
    load_seconds = time.perf_counter() - started
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens,
                            ignore_eos=args.ignore_eos)
    result = run_levels(lambda batch, c: run_level(llm, batch, c, params), method, k,
                        prompts, levels, args)
    del llm
    gc.collect()
    return {**result, "load_seconds": load_seconds}


def compare(results: list[dict]) -> None:
    """Adds, per level, speed-up and greedy equality against the run without speculation."""
    baseline = next((r for r in results if r["method"] == "none"), None)
    base_ids = baseline["_ids"] if baseline else {}
    base_rows = {row["concurrency"]: row for row in baseline["levels"]} if baseline else {}
    for r in results:
        for row in r["levels"]:
            c = row["concurrency"]
            if c in base_rows:
                row["speedup_vs_no_speculation"] = (row["output_tokens_per_s"]
                                                    / base_rows[c]["output_tokens_per_s"])
                row["matches_no_speculation"] = r["_ids"][c] == base_ids[c]
    for r in results:
        del r["_ids"]


def run_configuration_served(target: str, method: str, k: int, prompts, levels: list[int],
                             args) -> dict:
    import served_load
    common.TREE.update(args.tree or {})

    from vllm_vispec.serve_process import VllmServer
    spec = speculative_config(method, k)
    cli_args = common.serve_args(args.dtype, args.max_model_len, max(levels), "bench", spec,
                                 enforce_eager=args.enforce_eager,
                                 max_num_batched_tokens=args.max_num_batched_tokens,
                                 mm_kwargs=args.mm_kwargs, max_images=args.max_images)
    log = args.out / "logs" / f"{method.split('=')[0]}-k{k}.log"
    started = time.perf_counter()
    with VllmServer(target, cli_args, log_path=log) as server:
        load_seconds = time.perf_counter() - started
        result = run_levels(lambda batch, c: served_load.run_level(
            server, "bench", batch, c, args.max_tokens, args.ignore_eos),
            method, k, prompts, levels, args)
    return {**result, "load_seconds": load_seconds}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="the CPU quick mode: demo target; none, ngram, eagle=demo (k 3), "
                   "vispec=demo (k 1-5); concurrency 1 4 16; 16 prompts of 96 tokens")
    p.add_argument("--target", default="demo",
                   help="target folder or hub id, demo, demo-36/144/576 (the image-token "
                   "series) or tiny:KIND (%(default)s)")
    p.add_argument("--method", action="append", default=None,
                   help="none, ngram, eagle=DRAFT, vispec=DRAFT or vispec-tree=DRAFT "
                   "(repeatable); DRAFT may be demo or demo-N. Default: none, ngram, eagle=demo, "
                   "vispec=demo")
    p.add_argument("-k", "--num-speculative-tokens", type=int, nargs="+", default=[1, 2, 3, 4, 5],
                   help="draft lengths to run (%(default)s)")
    p.add_argument("--tree", type=parse_tree, default=None, metavar="DEPTH,TOP_K,TOTAL",
                   help="tree of the vispec-tree method (default 3,8,30, the paper's)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    p.add_argument("--dataset", default="demo",
                   help="demo (held-out pictures of the demo domain), demo-multi (2 to 4 "
                   "of them a prompt; raise --max-images) or a dataset file; see "
                   "benchmarks/datasets_local.py (%(default)s)")
    p.add_argument("--num-prompts", type=int, default=None,
                   help="requests per level (default: max(prompts, 2 x concurrency))")
    p.add_argument("--prompts", type=int, default=32, help="distinct prompts (%(default)s)")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--max-images", type=common.positive_int, default=2,
                   help="pictures a prompt may hold (vLLM's limit_mm_per_prompt; "
                   "%(default)s)")
    p.add_argument("--ignore-eos", action="store_true",
                   help="always generate --max-tokens tokens")
    p.add_argument("--seed", type=int, default=1000,
                   help="prompt seed, apart from the training data's (%(default)s)")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--max-model-len", type=int, default=1024)
    p.add_argument("--enforce-eager", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--max-num-batched-tokens", type=common.positive_int, default=None,
                   help="token budget of a step, offline and served (default: vLLM's); below "
                   "two pictures' tokens it splits pictures across steps and holds one "
                   "picture in the encoder cache at a time")
    p.add_argument("--mm-processor-kwargs", default="auto", metavar="JSON|auto|none",
                   help="vLLM's multimodal processor settings; auto (default) gives a "
                   "Qwen2.5-VL checkpoint the picture sizes the published ViSpec drafts were "
                   f"trained on ({common.QWEN_PIXEL_LIMITS}) and nothing to other targets")
    p.add_argument("--served", action="store_true",
                   help="through `vllm serve` (one server per configuration, streaming "
                   "OpenAI chat requests) instead of an offline engine")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    args = p.parse_args(argv)
    vispec_ks = None
    if args.quick:
        args.method = args.method or QUICK["methods"]
        args.num_speculative_tokens, vispec_ks = QUICK["ks"], QUICK["vispec_ks"]
        args.concurrency, args.prompts = QUICK["concurrency"], QUICK["num_prompts"]
        args.max_tokens = QUICK["max_tokens"]
    args.method = args.method or QUICK["methods"]
    for method in args.method:
        parse_method(method)  # refuse a bad method before any model is built
    if args.tree:
        common.TREE.update(args.tree)
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

    target = resolve_target(args.target)
    args.mm_kwargs = common.mm_processor_kwargs(args.target, target, args.mm_processor_kwargs)
    prompts = load_prompts(args.dataset, args.prompts, args.seed,
                           image_size=common.demo_picture_size(target))
    results = []
    for method, k in configurations(args.method, args.num_speculative_tokens, vispec_ks):
        if args.served:
            results.append(run_configuration_served(target, method, k, prompts,
                                                    args.concurrency, args))
            continue
        # A fresh process per engine: vLLM 0.32's CPU build fails to start a further engine
        # in a process that has run the ngram proposer (its Triton override registry).
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            results.append(pool.apply(run_configuration,
                                      (target, method, k, prompts, args.concurrency, args)))
    compare(results)
    report = {"target": args.target, "mm_processor_kwargs": args.mm_kwargs,
              "dataset": args.dataset, "prompts": args.prompts,
              "max_tokens": args.max_tokens, "dtype": args.dtype, "quick": args.quick,
              "max_num_batched_tokens": args.max_num_batched_tokens,
              "mode": "served" if args.served else "offline",
              "results": results}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(report, indent=2))
    from report import write_report
    write_report(report, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
