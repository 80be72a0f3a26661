"""One engine of the self-check, in a process of its own: greedy outputs and what it ran.

``python -m vllm_vispec.selfcheck.engine_run JOB.json OUT.json``. The job names the tiny
target, the speculation (``"none"``, ``"chain"`` or ``"tree"``) and the engine settings;
the process builds the engine, reads its facts in the worker, generates the conversations
batched and then each alone, and writes everything to ``OUT.json``. The self-check starts
one such process per engine, so each engine is gone (and its memory freed) before the next
starts, and a crash or a hang costs one engine only. The baseline runs with ``VLLM_PLUGINS``
naming no plugin and reports any sign of vllm-vispec as an error.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from typing import Any

from .engine_facts import plugin_state, worker_facts
from .prompts import conversations

# Trees for the batch too (the defaults draft chains above one running request).
TREE = {"depth": 2, "top_k": 4, "total_tokens": 11, "chain_above_batch": 64,
        "off_above_batch": 64}
SPEC_COUNTERS = ("num_drafts", "num_draft_tokens", "num_accepted_tokens")


def speculative_config(job: dict[str, Any]) -> dict[str, Any] | None:
    if job["mode"] == "none":
        return None
    from ..tiny import tiny_draft
    spec = {"method": "vispec", "model": str(tiny_draft(job["kind"])),
            "num_speculative_tokens": job["k"]}
    if job["mode"] == "tree":
        spec["tree"] = TREE
    return spec


def build_llm(job: dict[str, Any]):
    from vllm import LLM

    from ..tiny import tiny_target
    # The tree engine's thresholds (trees at every batch size) need synchronous scheduling;
    # async scheduling, vLLM's default on CUDA, takes trees with vLLM's schedule only.
    scheduling = {"async_scheduling": False} if job["mode"] == "tree" else {}
    return LLM(model=str(tiny_target(job["kind"])), dtype=job["dtype"],
               enforce_eager=job["enforce_eager"], max_model_len=1024, max_num_seqs=8,
               limit_mm_per_prompt={"image": 2}, kv_cache_memory_bytes=128 << 20, seed=0,
               disable_log_stats=False, speculative_config=speculative_config(job),
               **scheduling)


def greedy(llm, convs: dict[str, list], max_tokens: int, logprobs: bool) -> dict[str, Any]:
    """Token ids per conversation (and the top-2 (token, logprob) per position)."""
    from vllm import SamplingParams
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True,
                            logprobs=2 if logprobs else None)
    outs = llm.chat(list(convs.values()), params, use_tqdm=False)
    result = {}
    for name, out in zip(convs, outs):
        completion = out.outputs[0]
        entry: dict[str, Any] = {"tokens": list(completion.token_ids)}
        if logprobs and completion.logprobs:
            entry["top2"] = [sorted(((tok, lp.logprob) for tok, lp in pos.items()),
                                    key=lambda t: -t[1])[:2] for pos in completion.logprobs]
        result[name] = entry
    return result


def spec_counters(llm) -> dict[str, float]:
    out = {}
    for metric in llm.get_metrics():
        key = metric.name.removeprefix("vllm:spec_decode_")
        if key in SPEC_COUNTERS:
            out[key] = getattr(metric, "value", 0)
    return out


def run(job: dict[str, Any], result: dict[str, Any]) -> None:
    """Fills ``result`` as it goes: what was learnt before a failure is kept."""
    # The worker runs in this process: its facts are read directly and start-up is faster.
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    import vllm
    result["vllm"] = vllm.__version__
    llm = build_llm(job)
    result["facts"] = llm.collective_rpc(worker_facts)[0]
    plugin = plugin_state()
    if job["mode"] == "none" and (plugin["registered"] or plugin["patches_applied"]):
        raise RuntimeError(f"the baseline engine has vllm-vispec loaded ({plugin}): it must "
                           "be vLLM alone (VLLM_PLUGINS naming no plugin)")
    if job["mode"] != "none" and result["facts"]["drafter"] != "VispecProposer":
        raise RuntimeError(f"vispec engine drafts with {result['facts']['drafter']}, not "
                           "VispecProposer: the plugin did not take over the proposer")
    convs = conversations()
    logprobs = job["mode"] == "none"
    result["batched"] = greedy(llm, convs, job["max_tokens"], logprobs)
    result["alone"] = {}
    for name, conv in convs.items():
        result["alone"].update(greedy(llm, {name: conv}, job["max_tokens"], logprobs))
    result["counters"] = spec_counters(llm)


def main(argv=None) -> int:
    job_path, out_path = argv or sys.argv[1:]
    with open(job_path) as f:
        job = json.load(f)
    result: dict[str, Any] = {}
    try:
        run(job, result)
        code = 0
    except BaseException as e:  # recorded for the table; the log has the rest
        result.update(error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
        code = 1
    with open(out_path, "w") as f:
        json.dump(result, f)
    print(f"[selfcheck] engine {job['kind']} {job['mode']}: "
          f"{'ok' if code == 0 else result['error']}", flush=True)
    # Skip interpreter teardown of vLLM's threads: the process is done.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
