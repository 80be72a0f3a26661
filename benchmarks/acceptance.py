"""Acceptance of speculative methods on held-out image prompts, in one run.

Runs the same greedy requests through vLLM without speculation and with each method given,
and reports vLLM's acceptance length (1 + accepted / drafts, the bonus token included),
per-position acceptance, output tokens/s, and whether the text equals the run without
speculation. Example (the trained demo target, its ViSpec and text-only EAGLE drafts):

    python benchmarks/acceptance.py --target demo --method vispec=demo \\
        --method eagle=demo --method ngram -k 1 2 3 4 5 \\
        --out benchmarks/results/acceptance-demo.json

``--method`` takes ``vispec=DRAFT``, ``vispec-tree=DRAFT`` (EAGLE-2 trees, 3,8,30),
``eagle=DRAFT`` (vLLM's own EAGLE) or ``ngram``; see
``benchmarks/common.py`` for the ``demo`` and ``tiny:KIND`` shorthands.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time
from pathlib import Path

from common import (NO_COUNTS, acceptance, demo_picture_size, held_out_prompts, resolve_target,
                    spec_metrics, speculative_config)


def run(target: str, method: str, k: int, prompts, max_tokens: int) -> dict:
    from vllm import LLM, SamplingParams
    llm = LLM(model=target, dtype="float32", max_model_len=1024, enforce_eager=True,
              limit_mm_per_prompt={"image": 2}, disable_log_stats=False, seed=0,
              speculative_config=speculative_config(method, k))
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    start = time.perf_counter()
    outs = llm.chat([m for m, _ in prompts], params, use_tqdm=False)
    seconds = time.perf_counter() - start
    counters = spec_metrics(llm)
    del llm
    gc.collect()
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    return {
        "method": method, "num_speculative_tokens": k if method != "none" else 0,
        "output_tokens": tokens, "seconds": seconds, "output_tokens_per_s": tokens / seconds,
        **acceptance(NO_COUNTS, counters),
        "texts": [o.outputs[0].text for o in outs],
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", required=True,
                   help="target folder or hub id; demo (the trained demo target) or tiny:KIND")
    p.add_argument("--method", action="append", default=[],
                   help="vispec=DRAFT, eagle=DRAFT or ngram (repeatable); DRAFT may be demo")
    p.add_argument("-k", "--num-speculative-tokens", type=int, nargs="+", default=[3])
    p.add_argument("--num-prompts", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=96)
    p.add_argument("--seed", type=int, default=1000,
                   help="prompt seed; keep it apart from the training data's (%(default)s)")
    p.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = p.parse_args(argv)
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    target = resolve_target(args.target)
    prompts = held_out_prompts(args.num_prompts, args.seed, demo_picture_size(target))
    baseline = run(target, "none", 0, prompts, args.max_tokens)
    results = [baseline]
    for method in args.method:
        for k in args.num_speculative_tokens:
            r = run(target, method, k, prompts, args.max_tokens)
            r["matches_no_speculation"] = r["texts"] == baseline["texts"]
            r["speedup_vs_no_speculation"] = (r["output_tokens_per_s"]
                                              / baseline["output_tokens_per_s"])
            results.append(r)
            print(json.dumps({k2: v for k2, v in r.items() if k2 != "texts"}))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"target": args.target, "num_prompts": args.num_prompts,
                                    "max_tokens": args.max_tokens, "results": results},
                                   indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
