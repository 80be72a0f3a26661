"""A bounded soak of ``vllm serve`` with vispec: mixed requests at up to 64 in flight,
faults injected, every completed greedy answer checked against the server without
speculation. Loopback only; stops by itself.

The requests draw from a pool of distinct prompts (text-only, one picture, two pictures;
each with its own ``max_tokens``), streamed or not; some streams are dropped by the client
after a few chunks (vLLM aborts the request), a few requests carry a corrupt picture
(expected: a 4xx). The phases run closed loops at each ``--concurrency`` in turn.

First the pool is answered once by ``vllm serve`` without speculation and without any vLLM
plugin (the baseline: vLLM alone, ``VLLM_PLUGINS=""``, not vLLM with vispec's patches), then
the same server command with the speculative config takes the soak. Reported: sent, ok,
aborted by the client, 4xx (expected and not), 5xx, transport errors, mismatches against
the baseline, whether the server still answers (``/health`` and one more request) and how
many requests it still holds (``/metrics``), and vLLM's spec-decode counters. Exits 1 when
a completed answer differs, a 5xx or transport error occurred, a good request got a 4xx,
or the server did not survive.

    python benchmarks/soak.py --out benchmarks/results/soak/tiny-llava-chain.json
    python benchmarks/soak.py --target demo --method vispec=demo \\
        --out benchmarks/results/soak/demo-chain.json
    # a token budget smaller than two pictures (16-token pictures on tiny:llava)
    python benchmarks/soak.py --max-num-batched-tokens 16 \\
        --out benchmarks/results/soak/tiny-llava-small-budget.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

import common
from common import parse_method, resolve_target, serve_args, speculative_config
from served_load import sse_events

QUESTIONS = ("Describe the image.", "How many shapes are there?", "Which colour is largest?",
             "Where is the red shape?", "List the shapes from left to right.")
TEXT_ONLY = ("What is in the picture?", "Describe a red circle near the top.",
             "Name three colours.", "Count to five.", "What shape has four sides?")
SIZES = ((64, 64), (80, 64), (64, 96), (96, 96))
CORRUPT_IMAGE = {"type": "image_url",
                 "image_url": {"url": "data:image/png;base64,iVBORw0K!!!not-base64"}}


@dataclass
class Prompt:
    messages: list[dict]
    max_tokens: int
    kind: str  # text / one_image / two_images


def prompt_pool(size: int, seed: int) -> list[Prompt]:
    from vllm_vispec.tiny.images import image_part, shapes_image
    rng = random.Random(seed)
    pool = []
    for i in range(size):
        kind = ("text", "one_image", "two_images")[i % 3]
        max_tokens = rng.randint(8, 48)
        if kind == "text":
            pool.append(Prompt([{"role": "user", "content": rng.choice(TEXT_ONLY)}],
                               max_tokens, kind))
            continue
        images = [image_part(shapes_image(rng.randrange(1 << 20), rng.choice(SIZES)))
                  for _ in range(1 if kind == "one_image" else 2)]
        content = [*images, {"type": "text", "text": rng.choice(QUESTIONS)}]
        if rng.random() < 0.3:  # a picture after the text
            content = [content[-1], *content[:-1]]
        pool.append(Prompt([{"role": "user", "content": content}], max_tokens, kind))
    return pool


@dataclass
class Planned:
    index: int
    prompt: int  # index into the pool
    stream: bool
    abort_after: int | None  # content chunks read before the client hangs up
    bad: bool


def plan(count: int, pool_size: int, abort_fraction: float, bad_fraction: float,
         seed: int) -> list[Planned]:
    rng = random.Random(seed + 1)
    out = []
    for i in range(count):
        stream = rng.random() < 0.5
        abort = rng.randint(1, 3) if stream and rng.random() < abort_fraction else None
        out.append(Planned(i, rng.randrange(pool_size), stream, abort,
                           rng.random() < bad_fraction))
    return out


@dataclass
class Outcome:
    status: str  # ok / aborted / 4xx / 5xx / error
    http: int | None = None
    text: str = ""
    detail: str = ""


def request_body(model: str, prompt: Prompt, planned: Planned) -> dict:
    messages = prompt.messages
    if planned.bad:
        messages = [{"role": "user", "content": [CORRUPT_IMAGE,
                                                 {"type": "text", "text": "Describe it."}]}]
    body = {"model": model, "messages": messages, "temperature": 0,
            "max_tokens": prompt.max_tokens}
    if planned.stream:
        body["stream"] = True
    return body


async def send(session, url: str, body: dict, abort_after: int | None) -> Outcome:
    import aiohttp
    try:
        async with session.post(url, json=body) as resp:
            if resp.status != 200:
                kind = "4xx" if 400 <= resp.status < 500 else "5xx"
                return Outcome(kind, resp.status, detail=(await resp.text())[:300])
            if not body.get("stream"):
                reply = await resp.json()
                return Outcome("ok", 200, reply["choices"][0]["message"]["content"] or "")
            pieces, chunks, finished = [], 0, False
            async for event in sse_events(resp):
                if "error" in event:  # an error raised after the stream began
                    return Outcome("5xx", 200, detail=json.dumps(event)[:300])
                for choice in event.get("choices", []):
                    if choice["delta"].get("content"):
                        pieces.append(choice["delta"]["content"])
                        chunks += 1
                    finished = finished or choice.get("finish_reason") is not None
                if abort_after is not None and chunks >= abort_after:
                    resp.close()  # the client hangs up mid-stream
                    return Outcome("aborted", 200, "".join(pieces))
            if not finished:
                return Outcome("error", 200, "".join(pieces), "stream ended early")
            return Outcome("ok", 200, "".join(pieces))
    except (aiohttp.ClientError, asyncio.TimeoutError) as err:
        return Outcome("error", None, detail=repr(err)[:300])


async def run_phase(url: str, model: str, pool: list[Prompt], planned: list[Planned],
                    concurrency: int, outcomes: dict[int, Outcome], progress) -> None:
    import aiohttp
    queue = list(planned)

    async def worker(session):
        while queue:
            p = queue.pop(0)
            outcomes[p.index] = await send(session, url, request_body(model, pool[p.prompt], p),
                                           p.abort_after)
            progress.update(1)

    timeout = aiohttp.ClientTimeout(total=1800)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))


def baseline_answers(url: str, model: str, pool: list[Prompt]) -> list[str]:
    from tqdm import tqdm
    planned = [Planned(i, i, False, None, False) for i in range(len(pool))]
    outcomes: dict[int, Outcome] = {}
    with tqdm(total=len(pool), desc="baseline (no speculation)") as bar:
        asyncio.run(run_phase(url, model, pool, planned, 8, outcomes, bar))
    failed = {i: o for i, o in outcomes.items() if o.status != "ok"}
    if failed:
        raise SystemExit(f"the baseline server failed {len(failed)} prompts: "
                         f"{next(iter(failed.values()))}")
    return [outcomes[i].text for i in range(len(pool))]


@dataclass
class Report:
    target: str
    method: str
    num_speculative_tokens: int
    concurrency: list[int]
    sent: int = 0
    ok: int = 0
    aborted_by_client: int = 0
    status_4xx_expected: int = 0
    status_4xx_unexpected: int = 0
    status_5xx: int = 0
    transport_errors: int = 0
    mismatches: int = 0
    by_kind: dict = field(default_factory=dict)
    phases: list = field(default_factory=list)
    server_alive_after: bool = False
    requests_left_running: float | None = None
    spec_decode: dict = field(default_factory=dict)
    examples: list = field(default_factory=list)  # the first few failures, for the log
    max_num_batched_tokens: int | None = None  # None: vLLM's default token budget

    @property
    def passed(self) -> bool:
        return (self.mismatches == self.status_5xx == self.transport_errors
                == self.status_4xx_unexpected == 0 and self.server_alive_after
                and not self.requests_left_running)


def tally(report: Report, pool: list[Prompt], planned: list[Planned],
          outcomes: dict[int, Outcome], baseline: list[str]) -> None:
    for p in planned:
        o = outcomes[p.index]
        report.sent += 1
        kind = "bad" if p.bad else pool[p.prompt].kind
        counts = report.by_kind.setdefault(kind, {"sent": 0, "ok": 0})
        counts["sent"] += 1
        failure = None
        if o.status == "ok" and p.bad:
            failure = "a corrupt picture was answered"
            report.status_4xx_unexpected += 1  # it should have been refused
        elif o.status == "ok":
            report.ok += 1
            counts["ok"] += 1
            if o.text != baseline[p.prompt]:
                report.mismatches += 1
                failure = f"differs: {o.text[:80]!r} vs {baseline[p.prompt][:80]!r}"
        elif o.status == "aborted":
            report.aborted_by_client += 1
            if not baseline[p.prompt].startswith(o.text):
                report.mismatches += 1
                failure = "the aborted stream's prefix differs"
        elif o.status == "4xx":
            if p.bad:
                report.status_4xx_expected += 1
            else:
                report.status_4xx_unexpected += 1
                failure = o.detail
        elif o.status == "5xx":
            report.status_5xx += 1
            failure = o.detail
        else:
            report.transport_errors += 1
            failure = o.detail
        if failure and len(report.examples) < 5:
            report.examples.append({"request": asdict(p), "status": o.status, "http": o.http,
                                    "detail": failure})


def metric_value(url: str, name: str) -> float | None:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
        total = None
        for line in resp.read().decode().splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                total = (total or 0.0) + float(line.rsplit(" ", 1)[1])
        return total


def server_survived(server, model: str, prompt: Prompt, expected: str) -> bool:
    try:
        with urllib.request.urlopen(server.url + "/health", timeout=10) as resp:
            if resp.status != 200:
                return False
        reply = server.post("/v1/chat/completions", {
            "model": model, "messages": prompt.messages, "temperature": 0,
            "max_tokens": prompt.max_tokens})
        return reply["choices"][0]["message"]["content"] == expected
    except OSError:
        return False


def soak(args) -> Report:
    from tqdm import tqdm

    from vllm_vispec.serve_process import NO_PLUGINS_ENV, VllmServer
    target = resolve_target(args.target)
    name, _ = parse_method(args.method)
    if name == "none":
        raise SystemExit("--method must speculate (the baseline runs without it anyway)")
    common.TREE.update(args.tree or {})
    spec = speculative_config(args.method, args.k)
    pool = prompt_pool(args.distinct, args.seed)
    planned = plan(args.requests, len(pool), args.abort_fraction, args.bad_fraction,
                   args.seed)
    logs = args.out.parent / "logs"
    server_args = dict(dtype=args.dtype, max_model_len=args.max_model_len,
                       max_num_seqs=max(args.concurrency), name="soak",
                       max_num_batched_tokens=args.max_num_batched_tokens)

    with VllmServer(target, serve_args(**server_args, spec=None),
                    log_path=logs / "baseline.log", env=NO_PLUGINS_ENV) as server:
        baseline = baseline_answers(server.url + "/v1/chat/completions", "soak", pool)

    report = Report(args.target, args.method, spec["num_speculative_tokens"], args.concurrency,
                    max_num_batched_tokens=args.max_num_batched_tokens)
    outcomes: dict[int, Outcome] = {}
    per_phase = -(-len(planned) // len(args.concurrency))
    with VllmServer(target, serve_args(**server_args, spec=spec),
                    log_path=logs / "soak.log") as server:
        url = server.url + "/v1/chat/completions"
        before = server.spec_decode_counters()
        with tqdm(total=len(planned), desc="soak") as bar:
            for i, concurrency in enumerate(args.concurrency):
                batch = planned[i * per_phase:(i + 1) * per_phase]
                started = time.perf_counter()
                asyncio.run(run_phase(url, "soak", pool, batch, concurrency, outcomes, bar))
                report.phases.append({"concurrency": concurrency, "requests": len(batch),
                                      "seconds": round(time.perf_counter() - started, 1)})
        report.spec_decode = common.acceptance(before, server.spec_decode_counters())
        report.server_alive_after = server_survived(server, "soak", pool[0], baseline[0])
        # Aborted requests must leave the engine: wait briefly for the last ones.
        for _ in range(30):
            report.requests_left_running = metric_value(server.url, "vllm:num_requests_running")
            if not report.requests_left_running:
                break
            time.sleep(1)
    tally(report, pool, planned, outcomes, baseline)
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default="tiny:llava",
                   help="target folder or hub id, 'demo', or 'tiny:llava' / 'tiny:qwen2_5_vl'")
    p.add_argument("--method", default="vispec=tiny:llava",
                   help="vispec=DRAFT or vispec-tree=DRAFT (also eagle=DRAFT, ngram)")
    p.add_argument("-k", type=int, default=3, help="num_speculative_tokens")
    p.add_argument("--tree", type=common.parse_tree, default=None,
                   help="DEPTH,TOP_K,TOTAL_TOKENS for vispec-tree (default 3,8,30)")
    p.add_argument("--requests", type=int, default=500, help="requests in all")
    p.add_argument("--concurrency", type=int, nargs="+", default=[16, 64],
                   help="one closed-loop phase per level, the requests split evenly")
    p.add_argument("--distinct", type=int, default=48, help="distinct prompts in the pool")
    p.add_argument("--abort-fraction", type=float, default=0.15,
                   help="share of streamed requests the client drops after 1-3 chunks")
    p.add_argument("--bad-fraction", type=float, default=0.03,
                   help="share of requests with a corrupt picture (expected: 4xx)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--max-model-len", type=int, default=1024)
    p.add_argument("--max-num-batched-tokens", type=common.positive_int, default=None,
                   help="token budget of a step, for both servers (default: vLLM's); a "
                   "budget below two pictures' tokens (e.g. 16 on tiny:llava, 16-token "
                   "pictures) splits pictures across steps and holds one picture in the "
                   "encoder cache at a time")
    p.add_argument("--out", type=Path, required=True, help="the JSON report to write")
    args = p.parse_args(argv)
    if args.requests < 1 or min(args.concurrency) < 1 or args.distinct < 3:
        p.error("--requests and --concurrency must be positive, --distinct at least 3")

    report = soak(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**asdict(report), "passed": report.passed}, indent=1))
    summary = {k: getattr(report, k) for k in (
        "sent", "ok", "aborted_by_client", "status_4xx_expected", "status_4xx_unexpected",
        "status_5xx", "transport_errors", "mismatches", "server_alive_after",
        "requests_left_running")}
    print(json.dumps({**summary, "acceptance_length":
                      report.spec_decode.get("acceptance_length"), "passed": report.passed}))
    for example in report.examples:
        print("failure:", json.dumps(example), file=sys.stderr)
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
