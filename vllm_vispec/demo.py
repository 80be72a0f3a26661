"""Demo: ViSpec speculative decoding through ``vllm serve`` on a tiny local VLM.

Builds (once, cached) a tiny LLaVA or Qwen2.5-VL target and a ViSpec draft in the published
checkpoint layout, starts ``vllm serve`` with ``--speculative-config '{"method":"vispec",...}'``,
sends one chat request with an image, and does the same with vLLM alone (no speculation, no
plugin) first; prints the answer, whether both answers are identical, output tokens/s with
and without speculation, and vLLM's spec-decode counters (acceptance per position). The tiny models have random weights: the answer is gibberish,
but it is exactly what the target alone would say.

``--target demo`` serves the trained demo target instead (a small LLaVA that describes
pictures of coloured shapes) with its trained ViSpec draft: a real answer about the picture
and a real acceptance length. The first run trains both (about 30 + 10 minutes on 2 CPU
cores); later runs use the cache.
"""

from __future__ import annotations

import argparse
import json
import random
import os
import shlex
import tempfile
import time
from pathlib import Path

from .model.checkpoint import cache_root
from .serve_process import NO_PLUGINS_ENV, VllmServer
from .tiny import (DEMO_VERSION, TARGETS, scenes, tiny_draft, tiny_target, trained_demo_drafts,
                   trained_demo_target)
from .tiny.images import image_part, shapes_image


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="vispec-demo", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", choices=[*TARGETS, "demo"], default="llava",
                   help="which local target VLM to serve: a random-weight tiny one, or the "
                   "trained demo target (default: %(default)s)")
    p.add_argument("--num-speculative-tokens", type=int, default=3,
                   help="draft tokens proposed per step (default: %(default)s)")
    p.add_argument("--max-tokens", type=int, default=None,
                   help="tokens to generate (default: 64; 160 with --target demo)")
    p.add_argument("--prompt", default="Describe the image.",
                   help="the user's text, sent with one generated picture")
    p.add_argument("--seed", type=int, default=0, help="picks the picture (%(default)s)")
    p.add_argument("--log", type=Path, default=None,
                   help="where to write the vispec server's log (the plain server's goes "
                   "next to it, -plain.log; default: a temporary folder)")
    return p.parse_args(argv)


def demo_is_built() -> bool:
    """Whether the trained demo target and its drafts are in the cache already."""
    root = cache_root() / "tiny"
    return (root / f"demo-target-{DEMO_VERSION}" / "config.json").is_file() and \
        (root / f"demo-drafts-{DEMO_VERSION}" / "vispec" / "draft" / "config.json").is_file()


def serve_and_ask(target: Path, serve_args: list[str], request: dict, log: Path,
                  env: dict[str, str]) -> dict:
    """Starts ``vllm serve``, sends ``request`` twice (the first warms the server up) and
    returns the second reply, its wall time and the spec-decode counters it added."""
    started = time.monotonic()
    with VllmServer(str(target), serve_args, log_path=log, env=env) as server:
        print(f"[demo]   ready in {time.monotonic() - started:.0f}s (log: {log})")
        server.post("/v1/chat/completions", request)
        before = server.spec_decode_counters()
        t0 = time.perf_counter()
        reply = server.post("/v1/chat/completions", request)
        seconds = time.perf_counter() - t0
        after = server.spec_decode_counters()
    counters = {k: after[k] - before[k] for k in after if k != "accepted_per_position"}
    earlier = before["accepted_per_position"]
    counters["accepted_per_position"] = [
        n - (earlier[i] if i < len(earlier) else 0.0)
        for i, n in enumerate(after["accepted_per_position"])]
    return {"reply": reply, "seconds": seconds, "counters": counters}


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    max_tokens = args.max_tokens or (160 if args.target == "demo" else 64)
    if args.target == "demo":
        if demo_is_built():
            print("[demo] the trained demo target and its ViSpec draft (cached)")
        else:
            print("[demo] first run: training the demo target (about 30 minutes on 2 CPU "
                  "cores) and its ViSpec draft (about 10 more); cached for later runs")
        target, draft = trained_demo_target(), trained_demo_drafts()["vispec"]
        picture = scenes.draw(scenes.random_scene(random.Random(args.seed)), 84)
    else:
        print(f"[demo] building the tiny {args.target} target and its ViSpec draft (cached)")
        target, draft = tiny_target(args.target), tiny_draft(args.target)
        picture = shapes_image(seed=args.seed)
    spec = {"method": "vispec", "model": str(draft),
            "num_speculative_tokens": args.num_speculative_tokens}
    common = ["--dtype", "float32", "--max-model-len", "1024", "--enforce-eager",
              "--served-model-name", "tiny-vlm", "--limit-mm-per-prompt",
              json.dumps({"image": 2})]
    logs = args.log or Path(tempfile.mkdtemp(prefix="vispec-demo-")) / "server.log"
    request = {"model": "tiny-vlm", "temperature": 0, "max_tokens": max_tokens,
               "messages": [{"role": "user", "content": [
                   image_part(picture), {"type": "text", "text": args.prompt}]}]}
    cpu_cache = {"VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    print("[demo] 1/2 vllm serve " + shlex.join([str(target), *common])
          + "   (vLLM alone: no speculation, no plugin)")
    plain = serve_and_ask(target, common, request, logs.with_name(logs.stem + "-plain.log"),
                          {**cpu_cache, **NO_PLUGINS_ENV})
    serve_args = ["--speculative-config", json.dumps(spec), *common]
    print("[demo] 2/2 vllm serve " + shlex.join([str(target), *serve_args]))
    spec_run = serve_and_ask(target, serve_args, request, logs, cpu_cache)

    answer = spec_run["reply"]["choices"][0]["message"]["content"]
    usage = spec_run["reply"]["usage"]
    identical = answer == plain["reply"]["choices"][0]["message"]["content"]
    tokens = usage["completion_tokens"]
    speed = {name: tokens / run["seconds"] for name, run in
             (("plain", plain), ("vispec", spec_run))}
    counters = spec_run["counters"]
    drafts, drafted = counters["num_drafts"], counters["num_draft_tokens"]
    accepted = counters["num_accepted_tokens"]
    print(f"[demo] prompt tokens {usage['prompt_tokens']} (with image), "
          f"completion tokens {tokens}")
    print(f"[demo] answer: {answer!r}")
    print(f"[demo] identical to vLLM without speculation: {'yes' if identical else 'NO'}")
    print(f"[demo] output tokens/s: {speed['vispec']:.1f} with vispec, {speed['plain']:.1f} "
          f"without; speed-up {speed['vispec'] / speed['plain']:.2f}x (one request, this "
          "machine)")
    print(f"[demo] spec decode: drafted tokens {int(drafted)}, accepted tokens "
          f"{int(accepted)}, drafts {int(drafts)}, mean acceptance length "
          f"{1 + accepted / drafts if drafts else float('nan'):.2f}, accepted per position "
          f"{[int(x) for x in counters['accepted_per_position']]}")
    return 0 if drafted > 0 and identical else 1


if __name__ == "__main__":
    raise SystemExit(main())
