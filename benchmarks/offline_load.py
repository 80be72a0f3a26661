"""Closed-loop load on an offline ``LLM``: ``concurrency`` requests in flight at all times.

The engine runs in this process and is stepped by hand; a new request is enqueued the
moment one finishes, so the batch holds ``concurrency`` requests (as a served client pool
of that size would keep it). Per request, vLLM's own timestamps give TTFT and TPOT.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from common import acceptance, spec_metrics, summary


@dataclass
class LevelResult:
    concurrency: int
    requests: int
    output_tokens: int
    seconds: float
    ttft_s: dict
    tpot_s: dict
    spec: dict
    outputs: dict  # prompt index -> generated ids (offline) or text (served)

    def to_dict(self) -> dict:
        return {"concurrency": self.concurrency, "requests": self.requests,
                "output_tokens": self.output_tokens, "seconds": self.seconds,
                "output_tokens_per_s": self.output_tokens / self.seconds,
                "ttft_s": self.ttft_s, "tpot_s": self.tpot_s, **self.spec}


def _key(in_flight: dict[str, int], request_id: str) -> str:
    """``enqueue_chat`` returns vLLM's internal id (the external one plus a suffix);
    outputs carry the external one."""
    return next(k for k in in_flight if k == request_id or k.startswith(request_id + "-"))


def run_level(llm, prompts: list[tuple[list, list]], concurrency: int, params) -> LevelResult:
    """Sends every prompt once, ``concurrency`` at a time; prompt ``i`` keeps its index."""
    engine = llm.llm_engine
    if engine.has_unfinished_requests():
        raise RuntimeError("the engine has requests left from an earlier level")
    before = spec_metrics(llm)
    pending = list(range(len(prompts)))
    in_flight: dict[str, int] = {}
    ttft, tpot, token_ids = [], [], {}

    def submit() -> None:
        i = pending.pop(0)
        (request_id,) = llm.enqueue_chat([prompts[i][0]], params, use_tqdm=False)
        in_flight[request_id] = i

    start = time.perf_counter()
    while pending and len(in_flight) < concurrency:
        submit()
    while in_flight:
        for out in engine.step():
            if not out.finished:
                continue
            i = in_flight.pop(_key(in_flight, out.request_id))
            token_ids[i] = list(out.outputs[0].token_ids)
            stats = out.metrics
            n = len(token_ids[i])
            ttft.append(stats.first_token_latency)
            if n > 1:
                tpot.append((stats.last_token_ts - stats.first_token_ts) / (n - 1))
            if pending:
                submit()
    seconds = time.perf_counter() - start
    return LevelResult(concurrency, len(prompts), sum(len(t) for t in token_ids.values()),
                       seconds, summary(ttft), summary(tpot),
                       acceptance(before, spec_metrics(llm)), token_ids)
