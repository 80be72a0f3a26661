"""What the benchmark scripts share: naming targets, drafts and methods; held-out prompts;
vLLM's spec-decode counters; summary statistics.

Targets and drafts are folders (HF format), hub ids, or local shorthands:

- ``demo``: the trained demo target (``python -m vllm_vispec.tiny.demo_target``), and as a
  draft (``vispec=demo``, ``eagle=demo``) its ViSpec / text-only EAGLE draft;
- ``demo-36``, ``demo-144``, ``demo-576``: the image-token series (``benchmarks/image_tokens.py``),
  the demo domain at 36, 144 or 576 image tokens per picture, and as a draft its ViSpec /
  text-only EAGLE draft;
- ``tiny:llava``, ``tiny:qwen2_5_vl``: the random-weight test models and their drafts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python benchmarks/x.py` from a checkout
    sys.path.insert(0, str(ROOT))

SPEC_METHODS = ("vispec", "vispec-tree", "eagle")
# vispec-tree=DRAFT: ViSpec with EAGLE-2 trees at every batch size (the paper's setting by
# default; the chain fallback's thresholds are what the tree-vs-chain runs measure).
TREE = {"depth": 3, "top_k": 8, "total_tokens": 30}


# The picture sizes the published Qwen2.5-VL ViSpec drafts were trained and evaluated on:
# the authors' data generation and evaluation resize every picture to 256..1280 patches of
# 28 x 28 pixels. vLLM's (and the HF processor's) defaults allow up to 12,845,056 pixels,
# i.e. up to 16,384 image tokens a picture: far more than the drafts saw.
QWEN_PIXEL_LIMITS = {"min_pixels": 256 * 28 * 28, "max_pixels": 1280 * 28 * 28}


def mm_processor_kwargs(name: str, target: str, setting: str = "auto") -> dict:
    """The multimodal processor settings a benchmark passes to vLLM for ``target`` (the
    resolved path or hub id of ``name``): ``setting`` "auto" gives a Qwen2.5-VL checkpoint
    the drafts' pixel limits and leaves the local shorthands (tiny, demo) and other models
    alone; "none" passes nothing; anything else is a JSON object passed as it is."""
    if setting == "none":
        return {}
    if setting != "auto":
        value = json.loads(setting)
        if not isinstance(value, dict):
            raise SystemExit(f"--mm-processor-kwargs wants a JSON object, got {setting!r}")
        return value
    if is_demo(name) or name.startswith("tiny:"):
        return {}
    config = Path(target) / "config.json"
    model_type = (json.loads(config.read_text()).get("model_type", "")
                  if config.is_file() else "")
    is_qwen = model_type == "qwen2_5_vl" or "qwen2.5-vl" in target.lower()
    return dict(QWEN_PIXEL_LIMITS) if is_qwen else {}


def series_tokens(name: str) -> int | None:
    """The image tokens per picture of a ``demo-N`` shorthand, None for other names."""
    head, _, tokens = name.partition("-")
    if head != "demo" or not tokens:
        return None
    if not tokens.isdigit():
        raise SystemExit(f"{name!r}: the image-token series is demo-36, demo-144 or demo-576")
    return int(tokens)


def is_demo(name: str) -> bool:
    return name == "demo" or series_tokens(name) is not None


def demo_picture_size(target: str) -> int:
    """The side of the pictures a demo-domain target sees (its processor's crop size, in
    the processor file or the older image-processor file), so held-out pictures are drawn
    at it; 84 (the demo target's) for other targets."""
    for name, section in (("processor_config.json", "image_processor"),
                          ("preprocessor_config.json", None)):
        config = Path(target) / name
        if not config.is_file():
            continue
        data = json.loads(config.read_text())
        crop = (data.get(section) or {} if section else data).get("crop_size")
        if isinstance(crop, dict) and "height" in crop:
            return int(crop["height"])
    return 84


def resolve_target(name: str) -> str:
    if name == "demo":
        from vllm_vispec.tiny import trained_demo_target
        return str(trained_demo_target())
    if (tokens := series_tokens(name)) is not None:
        from vllm_vispec.tiny import image_token_target
        return str(image_token_target(tokens))
    if name.startswith("tiny:"):
        from vllm_vispec.tiny import tiny_target
        return str(tiny_target(name.split(":", 1)[1]))
    return name


def resolve_draft(name: str, method: str) -> str:
    if name == "demo":
        from vllm_vispec.tiny import trained_demo_drafts
        return str(trained_demo_drafts()[method])
    if (tokens := series_tokens(name)) is not None:
        from vllm_vispec.tiny import image_token_drafts
        return str(image_token_drafts(tokens)[method])
    if name.startswith("tiny:"):
        if method != "vispec":
            raise SystemExit("tiny targets have ViSpec drafts only: use vispec=tiny:KIND")
        from vllm_vispec.tiny import tiny_draft
        return str(tiny_draft(name.split(":", 1)[1]))
    return name


def parse_method(method: str) -> tuple[str, str | None]:
    """``none``, ``ngram``, ``vispec=DRAFT``, ``vispec-tree=DRAFT`` or ``eagle=DRAFT`` ->
    (name, draft)."""
    name, _, draft = method.partition("=")
    if name in ("none", "ngram") and not draft:
        return name, None
    if name in SPEC_METHODS and draft:
        return name, draft
    raise SystemExit(f"unknown method {method!r}: use none, ngram, vispec=DRAFT, "
                     "vispec-tree=DRAFT or eagle=DRAFT")


def speculative_config(method: str, k: int) -> dict | None:
    name, draft = parse_method(method)
    if name == "none":
        return None
    if name == "ngram":
        return {"method": "ngram", "num_speculative_tokens": k, "prompt_lookup_max": 3,
                "prompt_lookup_min": 1}
    if name == "vispec-tree":
        return {"method": "vispec", "model": resolve_draft(draft, "vispec"),
                "num_speculative_tokens": k,
                "tree": {**TREE, "chain_above_batch": 1 << 30, "off_above_batch": 1 << 30}}
    return {"method": name, "model": resolve_draft(draft, name), "num_speculative_tokens": k}


def serve_args(dtype: str, max_model_len: int, max_num_seqs: int, name: str,
               spec: dict | None, enforce_eager: bool = True,
               max_num_batched_tokens: int | None = None,
               mm_kwargs: dict | None = None, max_images: int = 2) -> list[str]:
    """``vllm serve`` arguments of the benchmark servers (``max_images`` a prompt, seed 0);
    ``max_num_batched_tokens`` None keeps vLLM's default token budget."""
    out = ["--dtype", dtype, "--max-model-len", str(max_model_len),
           "--max-num-seqs", str(max_num_seqs), "--served-model-name", name,
           "--limit-mm-per-prompt", json.dumps({"image": max_images}), "--seed", "0"]
    out += ["--enforce-eager"] if enforce_eager else []
    if mm_kwargs:
        out += ["--mm-processor-kwargs", json.dumps(mm_kwargs)]
    if max_num_batched_tokens is not None:
        out += ["--max-num-batched-tokens", str(max_num_batched_tokens)]
    return out + (["--speculative-config", json.dumps(spec)] if spec else [])


def parse_tree(value: str) -> dict:
    """``DEPTH,TOP_K,TOTAL_TOKENS`` -> the tree options of vispec-tree."""
    try:
        depth, top_k, total = (int(v) for v in value.split(","))
    except ValueError:
        raise SystemExit(f"--tree wants DEPTH,TOP_K,TOTAL_TOKENS, e.g. 3,8,30 (got {value!r})")
    return {"depth": depth, "top_k": top_k, "total_tokens": total}


def held_out_prompts(count: int, seed: int, image_size: int = 84) -> list[tuple[list, list]]:
    """Image prompts of the demo domain, from a seed the training data does not use,
    pictures drawn ``image_size`` pixels square."""
    from vllm_vispec.tiny.prompts import demo_prompts
    return demo_prompts(count, seed, image_size=image_size)


NO_COUNTS = {"num_drafts": 0, "num_draft_tokens": 0, "num_accepted_tokens": 0,
             "accepted_per_position": []}


def spec_metrics(llm) -> dict:
    """vLLM's spec-decode counters of an offline ``LLM`` (run with stats on)."""
    out = dict(NO_COUNTS)
    for m in llm.get_metrics():
        name = m.name.removeprefix("vllm:spec_decode_")
        if name == "num_accepted_tokens_per_pos":
            out["accepted_per_position"] = list(m.values)
        elif name in out:
            out[name] = m.value
    return out


def acceptance(before: dict, after: dict) -> dict:
    """vLLM's acceptance length (1 + accepted / drafts, the bonus token included) and the
    acceptance rate per draft position, between two counter snapshots."""
    drafts = after["num_drafts"] - before["num_drafts"]
    accepted = after["num_accepted_tokens"] - before["num_accepted_tokens"]
    per_pos_before = before["accepted_per_position"] or [0] * len(after["accepted_per_position"])
    per_pos = [a - b for a, b in zip(after["accepted_per_position"], per_pos_before)]
    return {"drafts": drafts, "accepted_tokens": accepted,
            "acceptance_length": 1 + accepted / drafts if drafts else None,
            "accepted_per_position": [a / drafts for a in per_pos] if drafts else []}


def summary(values: list[float]) -> dict:
    if not values:
        return {"median": None, "p99": None, "mean": None}
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {"median": statistics.median(ordered), "p99": p99,
            "mean": statistics.fmean(ordered)}


def positive_int(value: str) -> int:
    """argparse type: an integer of at least 1."""
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"want a positive integer, got {value!r}")
    return number
