"""Offline vLLM runs of the tiny targets with vispec, in this process (runs without
speculation, the baselines, go through plain_vllm: vLLM without any plugin)."""

from __future__ import annotations

import gc
import os
from contextlib import contextmanager

from heap import freeze_heap

from vllm_vispec.tiny import tiny_draft, tiny_target

MAX_TOKENS = 40
GREEDY = dict(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)


def vispec_config(kind: str, k: int, **extra) -> dict:
    return {"method": "vispec", "model": str(tiny_draft(kind)), "num_speculative_tokens": k,
            **extra}


def engine_args(kind: str, speculative_config: dict | None = None, **kwargs) -> dict:
    """The LLM(...) arguments of every offline test run; kwargs override them."""
    args = dict(model=str(tiny_target(kind)), dtype="float32", max_model_len=1024,
                max_num_seqs=8, enforce_eager=True, limit_mm_per_prompt={"image": 2},
                kv_cache_memory_bytes=128 << 20, disable_log_stats=False, seed=0,
                speculative_config=speculative_config)
    args.update(kwargs)
    return args


@contextmanager
def offline_llm(kind: str, speculative_config: dict | None = None, **kwargs):
    # One process: the engine core runs in the test process (fast start-up); the served
    # tests cover vLLM's default multi-process layout.
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    from vllm import LLM
    freeze_heap()
    llm = LLM(**engine_args(kind, speculative_config, **kwargs))
    try:
        yield llm
    finally:
        del llm
        gc.collect()


def greedy_params():
    from vllm import SamplingParams
    return SamplingParams(**GREEDY)


def greedy_chat(llm, convs: dict[str, list[dict]]) -> dict[str, tuple[list[int], str]]:
    """Greedy (token ids, text) per conversation name, all sent as one batch."""
    outs = llm.chat(list(convs.values()), greedy_params(), use_tqdm=False)
    return {name: (list(o.outputs[0].token_ids), o.outputs[0].text)
            for name, o in zip(convs, outs)}


def spec_counters(llm) -> dict[str, float]:
    out: dict[str, float] = {}
    for metric in llm.get_metrics():
        if metric.name.startswith("vllm:spec_decode_"):
            key = metric.name.removeprefix("vllm:spec_decode_")
            out[key] = getattr(metric, "value", None) if hasattr(metric, "value") \
                else list(metric.values)
    return out
