"""Draft overhead per step, vispec against vLLM's own EAGLE, in one run.

Two parts, each on offline engines in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``),
greedy with ``ignore_eos``, the same ``num_speculative_tokens`` for both methods:

a. At each batch size (that many requests of one image and the same length in flight): per
   draft step, the host time in the proposer (its ``propose``), the draft model's forward
   time, and the host-device syncs inside the draft passes (max and mean per step, by kind,
   and the lines that cause them; ``vllm_vispec.host_syncs``). Steps at the full batch are
   summarised.
b. Draft forward time per step against image tokens per request, on random-weight tiny
   LLaVA targets whose pictures give that many tokens (2880: five 336-px pictures of 576).

Each measurement is a counting run (every aten op goes through Python: syncs only, also the
warm-up) followed by ``--repeats`` timing runs of the same requests. Prefix caching is off so
every run does the same work.

    python benchmarks/draft_overhead.py              # tiny LLaVA, 1.5 min on 2 CPU cores
    python benchmarks/draft_overhead.py --quick
    python benchmarks/draft_overhead.py --demo       # the trained demo target, when built
    python benchmarks/draft_overhead.py --target llava-hf/llava-v1.6-vicuna-7b-hf \\
        --vispec-draft JLKang/ViSpec-llava-v1.6-vicuna-7b-hf --eagle-draft DRAFT \\
        --dtype bfloat16 --no-enforce-eager

Writes ``--out`` (JSON) and ``table.md`` beside it. Times are only comparable within a run.
On CPU the CPU is the device: the sync counts estimate what the same code would block on
with CUDA (see ``vllm_vispec/host_syncs.py``). The script re-runs itself with the venv's
Intel OpenMP preloaded (``--gnu-openmp`` not to): under GNU OpenMP each of vLLM's CPU ops
can take milliseconds (a draft step of the tiny EAGLE draft: ~150 ms instead of ~3 ms).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

import common
from common import positive_int

METHODS = ("vispec", "eagle")
DEFAULT_OUT = common.ROOT / "benchmarks" / "results" / "draft-overhead" / "results.json"
DEFAULTS = dict(batch=[1, 8, 32], max_tokens=128, image_batch=[1, 8], image_max_tokens=64,
                repeats=3)
QUICK = dict(batch=[1, 8], max_tokens=32, image_batch=[1], image_max_tokens=24, repeats=1)
QUESTION = "Describe the image."


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help=f"batches {QUICK['batch']}, {QUICK['max_tokens']} tokens; image "
                   f"tokens at batch {QUICK['image_batch']} only, {QUICK['image_max_tokens']} "
                   "tokens; one timing run")
    p.add_argument("--demo", action="store_true",
                   help="part a on the trained demo target and its drafts (must be built: "
                   "python -m vllm_vispec.tiny.demo_target --drafts)")
    p.add_argument("--target", default="tiny:llava",
                   help="target of part a: folder, hub id, tiny:llava or demo (%(default)s)")
    p.add_argument("--vispec-draft", default=None,
                   help="ViSpec draft of --target (default: the tiny or demo one)")
    p.add_argument("--eagle-draft", default=None,
                   help="EAGLE-1 draft of --target (default: the tiny ViSpec draft in "
                   "vLLM's EAGLE layout, or the demo one)")
    p.add_argument("-k", "--num-speculative-tokens", type=positive_int, default=3)
    p.add_argument("--batch", type=positive_int, nargs="+",
                   help=f"part a batch sizes ({DEFAULTS['batch']})")
    p.add_argument("--max-tokens", type=positive_int,
                   help=f"tokens per request in part a ({DEFAULTS['max_tokens']})")
    p.add_argument("--image-tokens", type=positive_int, nargs="*", default=[36, 576, 2880],
                   help="part b image tokens per request; none skips part b (%(default)s)")
    p.add_argument("--image-batch", type=positive_int, nargs="+",
                   help=f"part b batch sizes ({DEFAULTS['image_batch']})")
    p.add_argument("--image-max-tokens", type=positive_int,
                   help=f"tokens per request in part b ({DEFAULTS['image_max_tokens']})")
    p.add_argument("--repeats", type=positive_int,
                   help=f"timing runs per measurement, steps pooled ({DEFAULTS['repeats']})")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--max-model-len", type=positive_int, default=1024,
                   help="part a (part b fits its longest prompt) (%(default)s)")
    p.add_argument("--enforce-eager", action=argparse.BooleanOptionalAction, default=True,
                   help="eager draft (the forward timer wraps the module's forward; "
                   "CUDA-graph replays bypass it)")
    p.add_argument("--gnu-openmp", action="store_true",
                   help="do not re-run under the venv's Intel OpenMP (libiomp5): under GNU "
                   "OpenMP each of vLLM's CPU ops can take milliseconds (vLLM warns about it "
                   "for speculative decoding), which swamps the draft's own cost")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help="results JSON; table.md is written beside it (%(default)s)")
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:  # options given explicitly win over --quick
            setattr(args, key, value)
    if args.demo:
        args.target = "demo"
    from tiny_models import MAX_POSITIONS, image_layout
    for tokens in args.image_tokens:
        image_layout(tokens)  # refuse an impossible count before any model is built
        if part_b_model_len(tokens, args) > MAX_POSITIONS:
            p.error(f"{tokens} image tokens and {args.image_max_tokens} new tokens do not fit "
                    f"the part b targets' {MAX_POSITIONS} positions")
    if not args.target.startswith("tiny:") and args.target != "demo" and not (
            args.vispec_draft and args.eagle_draft):
        p.error("--target other than tiny:KIND or demo needs --vispec-draft and --eagle-draft")
    return args


# ---- models ------------------------------------------------------------------------------
def demo_models() -> dict[str, str]:
    """The trained demo target and drafts, only if already built (training takes an hour)."""
    from vllm_vispec.model.checkpoint import cache_root
    from vllm_vispec.tiny import DEMO_VERSION, trained_demo_drafts, trained_demo_target
    root = cache_root() / "tiny"
    if not ((root / f"demo-target-{DEMO_VERSION}" / "config.json").is_file()
            and (root / f"demo-drafts-{DEMO_VERSION}" / "eagle" / "draft" / "config.json")
            .is_file()):
        raise SystemExit("the demo target and drafts are not built yet: "
                         "python -m vllm_vispec.tiny.demo_target --drafts")
    drafts = trained_demo_drafts()
    return {"target": str(trained_demo_target()), "vispec": str(drafts["vispec"]),
            "eagle": str(drafts["eagle"])}


def part_a_models(args) -> dict[str, str]:
    if args.target == "demo":
        models = demo_models()
    elif args.target.startswith("tiny:"):
        from tiny_models import eagle_draft
        from vllm_vispec.tiny import tiny_draft, tiny_target
        kind = args.target.split(":", 1)[1]
        target, vispec = tiny_target(kind), tiny_draft(kind)
        models = {"target": str(target), "vispec": str(vispec),
                  "eagle": str(eagle_draft(vispec, target, f"{kind}-eagle"))}
    else:
        models = {"target": args.target, "vispec": None, "eagle": None}
    if args.vispec_draft:
        models["vispec"] = common.resolve_draft(args.vispec_draft, "vispec")
    if args.eagle_draft:
        models["eagle"] = common.resolve_draft(args.eagle_draft, "eagle")
    return models


# ---- requests ----------------------------------------------------------------------------
def conversations(count: int, images: int, seed: int = 0) -> list[list[dict]]:
    """``count`` chats of ``images`` pictures each and the same text: same token length."""
    from vllm_vispec.tiny.images import image_part, shapes_image
    return [[{"role": "user", "content": [
        *(image_part(shapes_image(seed + 100 * i + j)) for j in range(images)),
        {"type": "text", "text": QUESTION}]}] for i in range(count)]


# ---- measuring ---------------------------------------------------------------------------
def _ms(values: list[float]) -> dict:
    """Median and mean, and the minimum (what is left of a step when other work on a shared
    machine takes none of it)."""
    if not values:
        return {"median": None, "mean": None, "min": None}
    return {"median": statistics.median(values) * 1e3, "mean": statistics.fmean(values) * 1e3,
            "min": min(values) * 1e3}


def at_batch(steps: list[dict], batch: int) -> list[dict]:
    """The steps that drafted for the whole batch (all steps if none did)."""
    full = [s for s in steps if s["num_reqs"] == batch]
    return full or steps


def summarise(sync_steps: list[dict], time_steps: list[dict], batch: int, top: int = 3) -> dict:
    from collections import Counter
    counted, timed = at_batch(sync_steps, batch), at_batch(time_steps, batch)
    syncs = [s["syncs"] for s in counted]
    kinds, where, reads = Counter(), Counter(), Counter()
    for s in counted:
        kinds.update(s["by_kind"])
        where.update(s["where"])
        reads.update(s.get("host_reads", {}))
    n = max(len(counted), 1)
    return {
        "steps": len(time_steps), "steps_at_batch": len(timed),
        "host_ms": _ms([s["host_s"] for s in timed]),
        "forward_ms": _ms([s["forward_s"] for s in timed]),
        "forward_calls_per_step": statistics.median([s["forward_calls"] for s in timed])
        if timed else None,
        "syncs_per_step": {"max": max(syncs, default=0),
                           "mean": statistics.fmean(syncs) if syncs else 0.0},
        "syncs_per_step_all_steps": {
            "max": max((s["syncs"] for s in sync_steps), default=0),
            "mean": statistics.fmean([s["syncs"] for s in sync_steps]) if sync_steps else 0.0},
        "syncs_by_kind_per_step": {k: v / n for k, v in kinds.most_common()},
        "top_locations": [{"where": w, "per_step": c / n} for w, c in where.most_common(top)],
        # Reads of host data (vLLM's CPU mirrors, tensors made from Python data): not syncs.
        "host_reads_per_step": [{"read": r, "per_step": c / n}
                                for r, c in reads.most_common(top)],
    }


def measure(llm, convs: list, max_tokens: int, batch: int, repeats: int = 1) -> dict:
    from vllm import SamplingParams

    from vllm_vispec.host_syncs import HostSyncCounter, drafter_of
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    drafter = drafter_of(llm)
    with HostSyncCounter(drafter, keep_events=False) as counted:
        llm.chat(convs, params, use_tqdm=False)
    before = common.spec_metrics(llm)
    started = time.perf_counter()
    with HostSyncCounter(drafter, count=False, keep_events=False) as timed:
        for _ in range(repeats):
            llm.chat(convs, params, use_tqdm=False)
    seconds = (time.perf_counter() - started) / repeats
    spec = common.acceptance(before, common.spec_metrics(llm))
    return {**summarise(counted.steps, timed.steps, batch), "seconds": seconds,
            "acceptance_length": spec["acceptance_length"]}


def engine(target: str, method: str, draft: str, args, max_model_len: int, images: int,
           max_num_seqs: int):
    from vllm import LLM
    return LLM(model=target, dtype=args.dtype, max_model_len=max_model_len,
               enforce_eager=args.enforce_eager, limit_mm_per_prompt={"image": images},
               max_num_seqs=max_num_seqs, seed=0, enable_prefix_caching=False,
               disable_log_stats=False,
               speculative_config={"method": method, "model": draft,
                                   "num_speculative_tokens": args.num_speculative_tokens})


def run_part_a(args, models: dict) -> list[dict]:
    rows = []
    for method in METHODS:
        started = time.perf_counter()
        llm = engine(models["target"], method, models[method], args, args.max_model_len, 1,
                     max(args.batch))
        load = time.perf_counter() - started
        for batch in args.batch:
            row = {"part": "batch", "method": method, "batch": batch,
                   "load_seconds": load,
                   **measure(llm, conversations(batch, 1), args.max_tokens, batch,
                             args.repeats)}
            rows.append(row)
            _progress(row)
        del llm
        gc.collect()
    return rows


def part_b_model_len(image_tokens: int, args) -> int:
    """A power of two above the prompt (pictures and text) and the new tokens."""
    longest = image_tokens + 256 + args.image_max_tokens + 2 * args.num_speculative_tokens
    return 1 << (longest - 1).bit_length()


def run_part_b(args) -> tuple[list[dict], dict]:
    from tiny_models import image_layout, llava_with_image_size
    layouts = {n: image_layout(n) for n in args.image_tokens}
    by_pixels: dict[int, list[int]] = {}
    for n, (_, pixels) in layouts.items():
        by_pixels.setdefault(pixels, []).append(n)
    rows = []
    for pixels, counts in sorted(by_pixels.items()):
        models = llava_with_image_size(pixels)
        images = max(layouts[n][0] for n in counts)
        max_model_len = part_b_model_len(max(counts), args)
        for method in METHODS:
            llm = engine(str(models["target"]), method, str(models[method]), args,
                         max_model_len, images, max(args.image_batch))
            for n in counts:
                for batch in args.image_batch:
                    row = {"part": "image_tokens", "method": method, "image_tokens": n,
                           "images": layouts[n][0], "image_pixels": pixels, "batch": batch,
                           **measure(llm, conversations(batch, layouts[n][0]),
                                     args.image_max_tokens, batch, args.repeats)}
                    rows.append(row)
                    _progress(row)
            del llm
            gc.collect()
    described = {str(n): f"{c} picture(s) of {px}x{px} px, {(px // 14) ** 2} tokens each"
                 for n, (c, px) in layouts.items()}
    return rows, described


def _progress(row: dict) -> None:
    keep = ("part", "method", "batch", "image_tokens", "steps_at_batch")
    print(json.dumps({**{k: row[k] for k in keep if k in row},
                      "host_ms": row["host_ms"]["median"],
                      "forward_ms": row["forward_ms"]["median"],
                      "syncs_max": row["syncs_per_step"]["max"]}), flush=True)


def ratios(rows: list[dict]) -> list[dict]:
    """vispec / eagle per batch (part a) and per image-token count and batch (part b)."""
    out = []
    index = {(r["part"], r.get("image_tokens"), r["batch"], r["method"]): r for r in rows}
    for (part, tokens, batch, method), r in index.items():
        other = index.get((part, tokens, batch, "eagle"))
        if method != "vispec" or other is None:
            continue

        def ratio(key):
            a, b = r[key]["median"], other[key]["median"]
            return a / b if a is not None and b else None
        out.append({"part": part, "image_tokens": tokens, "batch": batch,
                    "host_ms": ratio("host_ms"), "forward_ms": ratio("forward_ms"),
                    "syncs_mean": (r["syncs_per_step"]["mean"], other["syncs_per_step"]["mean"])})
    return out


# ---- report ------------------------------------------------------------------------------
def _f(value, spec: str = ".2f") -> str:
    return "–" if value is None else format(value, spec)


def table(report: dict) -> str:
    lines = [f"Target (part a): `{report['target']}`, k = {report['num_speculative_tokens']}, "
             f"dtype {report['dtype']}, enforce_eager {report['enforce_eager']}, "
             f"OpenMP {report.get('openmp', '?')}.", "",
             "| method | batch | steps at batch | host ms/step median / mean | "
             "draft forward ms/step median / mean | syncs/step max / mean | "
             "top culprit (per step) |", "|" + "---|" * 7]
    for r in report["rows"]:
        if r["part"] != "batch":
            continue
        top = r["top_locations"][0] if r["top_locations"] else None
        culprit = f"`{top['where']}` ({top['per_step']:.1f})" if top else "–"
        lines.append(
            f"| {r['method']} | {r['batch']} | {r['steps_at_batch']} | "
            f"{_f(r['host_ms']['median'])} / {_f(r['host_ms']['mean'])} | "
            f"{_f(r['forward_ms']['median'])} / {_f(r['forward_ms']['mean'])} | "
            f"{r['syncs_per_step']['max']} / {r['syncs_per_step']['mean']:.1f} | {culprit} |")
    image_rows = [r for r in report["rows"] if r["part"] == "image_tokens"]
    if image_rows:
        lines += ["", "Draft forward time per step (median ms) against image tokens per "
                  "request:", "",
                  "| image tokens | pictures | batch | vispec | eagle | vispec / eagle |",
                  "|" + "---|" * 6]
        index = {(r["image_tokens"], r["batch"], r["method"]): r for r in image_rows}
        for (tokens, batch, method), r in sorted(index.items()):
            if method != "vispec":
                continue
            e = index.get((tokens, batch, "eagle"))
            v_ms = r["forward_ms"]["median"]
            e_ms = e["forward_ms"]["median"] if e else None
            lines.append(f"| {tokens} | {report['image_layouts'].get(str(tokens), '–')} | "
                         f"{batch} | {_f(v_ms)} | {_f(e_ms)} | "
                         f"{_f(v_ms / e_ms if v_ms is not None and e_ms else None)} |")
    return "\n".join(lines) + "\n"


def shown(path: str | None) -> str | None:
    """A model folder inside the checkout relative to it (hub ids stay as they are)."""
    if path is None or not Path(path).is_absolute():
        return path
    try:
        return str(Path(path).relative_to(common.ROOT))
    except ValueError:
        return path


def write(report: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    (out.parent / "table.md").write_text(table(report))


def intel_openmp() -> Path | None:
    """The venv's libiomp5 (vLLM-CPU's recommended OpenMP), if it has one."""
    lib = Path(sys.prefix) / "lib" / "libiomp5.so"
    return lib if lib.is_file() else None


def openmp_in_use() -> str:
    return "intel" if "libiomp5" in os.environ.get("LD_PRELOAD", "") else "gnu"


def reexec_with_intel_openmp(argv: list[str]) -> None:
    """LD_PRELOAD only takes effect at process start: run this script again with it."""
    lib = intel_openmp()
    if lib is None or openmp_in_use() == "intel":
        return
    preload = f"{lib} {os.environ.get('LD_PRELOAD', '')}".strip()
    os.execve(sys.executable, [sys.executable, str(Path(__file__).resolve()), *argv],
              {**os.environ, "LD_PRELOAD": preload})


def main(argv=None) -> int:
    args = parse_args(argv)
    if argv is None and not args.gnu_openmp:
        reexec_with_intel_openmp(sys.argv[1:])
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    if os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] != "0":
        raise SystemExit("the counter needs the engine in this process: "
                         "VLLM_ENABLE_V1_MULTIPROCESSING=0")
    started = time.perf_counter()
    models = part_a_models(args)
    rows = run_part_a(args, models) if args.batch else []
    image_rows, layouts = run_part_b(args) if args.image_tokens else ([], {})
    report = {"target": args.target, "models": {k: shown(v) for k, v in models.items()},
              "num_speculative_tokens": args.num_speculative_tokens, "dtype": args.dtype,
              "enforce_eager": args.enforce_eager, "quick": args.quick,
              "openmp": openmp_in_use(),
              "max_tokens": args.max_tokens, "image_max_tokens": args.image_max_tokens,
              "repeats": args.repeats,
              "image_layouts": layouts, "seconds": time.perf_counter() - started,
              "rows": rows + image_rows, "ratios_vispec_over_eagle": ratios(rows + image_rows)}
    write(report, args.out)
    print(table(report))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
