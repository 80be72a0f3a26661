"""Acceptance of speculative methods on held-out image prompts, in one run.

Runs the same greedy requests through vLLM without speculation and with each method given,
and reports vLLM's acceptance length (1 + accepted / drafts, the bonus token included),
per-position acceptance, output tokens/s, and whether the text equals the run without
speculation. Example (the tiny local LLaVA and its draft):

    python benchmarks/acceptance.py --target tiny:llava \\
        --method vispec=tiny:llava --method ngram --out benchmarks/results/acceptance.json

``--method`` takes ``vispec=DRAFT``, ``eagle=DRAFT`` (vLLM's own EAGLE) or ``ngram``; a DRAFT
or TARGET of the form ``tiny:KIND`` names a tiny local model.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time
from pathlib import Path


def resolve(path: str, draft: bool = False) -> str:
    if path.startswith("tiny:"):
        from vllm_vispec.tiny import tiny_draft, tiny_target
        return str((tiny_draft if draft else tiny_target)(path.split(":", 1)[1]))
    return path


def speculative_config(method: str, k: int) -> dict | None:
    if method == "none":
        return None
    name, _, draft = method.partition("=")
    if name == "ngram":
        return {"method": "ngram", "num_speculative_tokens": k, "prompt_lookup_max": 3,
                "prompt_lookup_min": 1}
    if name in ("vispec", "eagle") and draft:
        return {"method": name, "model": resolve(draft, draft=True), "num_speculative_tokens": k}
    raise SystemExit(f"unknown --method {method!r}: use vispec=DRAFT, eagle=DRAFT or ngram")


def run(target: str, method: str, k: int, prompts, max_tokens: int) -> dict:
    from vllm import LLM, SamplingParams
    llm = LLM(model=target, dtype="float32", max_model_len=2048, enforce_eager=True,
              limit_mm_per_prompt={"image": 2}, disable_log_stats=False, seed=0,
              speculative_config=speculative_config(method, k))
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    start = time.perf_counter()
    outs = llm.chat([m for m, _ in prompts], params, use_tqdm=False)
    seconds = time.perf_counter() - start
    counters = {m.name.removeprefix("vllm:spec_decode_"): (
        list(m.values) if hasattr(m, "values") else m.value)
        for m in llm.get_metrics() if m.name.startswith("vllm:spec_decode_")}
    del llm
    gc.collect()
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    drafts = counters.get("num_drafts", 0)
    accepted = counters.get("num_accepted_tokens", 0)
    return {
        "method": method, "num_speculative_tokens": k if method != "none" else 0,
        "output_tokens": tokens, "seconds": seconds, "output_tokens_per_s": tokens / seconds,
        "acceptance_length": 1 + accepted / drafts if drafts else None,
        "accepted_per_position": [a / drafts for a in counters.get(
            "num_accepted_tokens_per_pos", [])] if drafts else [],
        "texts": [o.outputs[0].text for o in outs],
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", required=True, help="target folder, or tiny:llava / tiny:qwen2_5_vl")
    p.add_argument("--method", action="append", default=[],
                   help="vispec=DRAFT, eagle=DRAFT or ngram (repeatable)")
    p.add_argument("-k", "--num-speculative-tokens", type=int, nargs="+", default=[3])
    p.add_argument("--num-prompts", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=96)
    p.add_argument("--seed", type=int, default=1000,
                   help="prompt seed; keep it apart from the training data's (%(default)s)")
    p.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = p.parse_args(argv)
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from vllm_vispec.train.data import demo_prompts

    target = resolve(args.target)
    prompts = demo_prompts(args.num_prompts, args.seed)
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
