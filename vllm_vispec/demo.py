"""Demo: ViSpec speculative decoding through ``vllm serve`` on a tiny local VLM.

Builds (once, cached) a tiny LLaVA or Qwen2.5-VL target and a ViSpec draft in the published
checkpoint layout, starts ``vllm serve`` with ``--speculative-config '{"method":"vispec",...}'``,
sends one chat request with an image, prints the answer and vLLM's spec-decode counters,
and shuts the server down. The tiny models have random weights: the answer is gibberish,
but it is exactly what the target alone would say.

``--target demo`` serves the trained demo target instead (a small LLaVA that describes
pictures of coloured shapes) with its trained ViSpec draft: a real answer about the picture
and a real acceptance length. The first run trains both (about 25 + 10 minutes on 2 CPU
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

from .serve_process import VllmServer
from .tiny import TARGETS, scenes, tiny_draft, tiny_target, trained_demo_drafts, trained_demo_target
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
                   help="where to write the server's log (default: a temporary file)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    max_tokens = args.max_tokens or (160 if args.target == "demo" else 64)
    if args.target == "demo":
        print("[demo] the trained demo target and its ViSpec draft (the first run trains "
              "them: about 35 minutes; cached after)")
        target, draft = trained_demo_target(), trained_demo_drafts()["vispec"]
        picture = scenes.draw(scenes.random_scene(random.Random(args.seed)), 84)
    else:
        print(f"[demo] building the tiny {args.target} target and its ViSpec draft (cached)")
        target, draft = tiny_target(args.target), tiny_draft(args.target)
        picture = shapes_image(seed=args.seed)
    spec = {"method": "vispec", "model": str(draft),
            "num_speculative_tokens": args.num_speculative_tokens}
    serve_args = ["--speculative-config", json.dumps(spec), "--dtype", "float32",
                  "--max-model-len", "1024", "--enforce-eager", "--served-model-name",
                  "tiny-vlm", "--limit-mm-per-prompt", json.dumps({"image": 2})]
    log = args.log or Path(tempfile.mkdtemp(prefix="vispec-demo-")) / "server.log"
    print("[demo] vllm serve " + shlex.join([str(target), *serve_args]))
    print(f"[demo] server log: {log}")
    started = time.monotonic()
    with VllmServer(str(target), serve_args, log_path=log,
                    env={"VLLM_CPU_KVCACHE_SPACE": os.environ.get(
                        "VLLM_CPU_KVCACHE_SPACE", "1")}) as server:
        print(f"[demo] server ready in {time.monotonic() - started:.0f}s at {server.url}")
        request = {"model": "tiny-vlm", "temperature": 0, "max_tokens": max_tokens,
                   "messages": [{"role": "user", "content": [
                       image_part(picture),
                       {"type": "text", "text": args.prompt}]}]}
        reply = server.post("/v1/chat/completions", request)
        counters = server.spec_decode_counters()
    answer = reply["choices"][0]["message"]["content"]
    usage = reply["usage"]
    drafts, drafted = counters["num_drafts"], counters["num_draft_tokens"]
    accepted = counters["num_accepted_tokens"]
    print(f"[demo] prompt tokens {usage['prompt_tokens']} (with image), "
          f"completion tokens {usage['completion_tokens']}")
    print(f"[demo] answer: {answer!r}")
    print(f"[demo] spec decode: drafted tokens {int(drafted)}, accepted tokens "
          f"{int(accepted)}, drafts {int(drafts)}, mean acceptance length "
          f"{1 + accepted / drafts if drafts else float('nan'):.2f}, accepted per position "
          f"{[int(x) for x in counters['accepted_per_position']]}")
    return 0 if drafted > 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
