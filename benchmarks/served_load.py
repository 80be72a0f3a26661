"""Closed-loop load on a running ``vllm serve``: ``concurrency`` streaming chat requests in
flight at all times (OpenAI API), TTFT and TPOT measured at the client, spec-decode
counters read from ``/metrics`` before and after."""

from __future__ import annotations

import asyncio
import json
import time

from common import acceptance, summary
from offline_load import LevelResult

from vllm_vispec.serve_process import VllmServer


async def sse_events(resp):
    """The JSON events of a streamed OpenAI response (``data: ...`` lines, ``[DONE]`` not)."""
    async for raw in resp.content:
        line = raw.decode().strip()
        if line.startswith("data:") and line != "data: [DONE]":
            yield json.loads(line[5:])


async def _one(session, url: str, body: dict) -> tuple[float, float | None, str, int]:
    """(ttft, tpot, text, completion tokens) of one streamed request."""
    start = time.perf_counter()
    first = last = None
    pieces, tokens = [], 0
    async with session.post(url, json=body) as resp:
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {await resp.text()}")
        async for chunk in sse_events(resp):
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for choice in chunk.get("choices", []):
                if choice["delta"].get("content"):
                    now = time.perf_counter()
                    first = first or now
                    last = now
                    pieces.append(choice["delta"]["content"])
    ttft = (first or time.perf_counter()) - start
    tpot = (last - first) / (tokens - 1) if first and tokens > 1 else None
    return ttft, tpot, "".join(pieces), tokens


async def _level(server: VllmServer, model: str, prompts, concurrency: int,
                 max_tokens: int, ignore_eos: bool):
    import aiohttp
    queue = list(enumerate(prompts))
    results: dict[int, tuple] = {}

    async def worker(session):
        while queue:
            i, (messages, _) = queue.pop(0)
            body = {"model": model, "messages": messages, "temperature": 0,
                    "max_tokens": max_tokens, "stream": True, "ignore_eos": ignore_eos,
                    "stream_options": {"include_usage": True}}
            results[i] = await _one(session, server.url + "/v1/chat/completions", body)

    timeout = aiohttp.ClientTimeout(total=3600)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return results


def run_level(server: VllmServer, model: str, prompts, concurrency: int, max_tokens: int,
              ignore_eos: bool = False) -> LevelResult:
    before = server.spec_decode_counters()
    start = time.perf_counter()
    results = asyncio.run(_level(server, model, prompts, concurrency, max_tokens, ignore_eos))
    seconds = time.perf_counter() - start
    after = server.spec_decode_counters()
    texts = {i: r[2] for i, r in results.items()}
    return LevelResult(concurrency, len(prompts), sum(r[3] for r in results.values()), seconds,
                       summary([r[0] for r in results.values()]),
                       summary([r[1] for r in results.values() if r[1] is not None]),
                       acceptance(before, after), texts)
