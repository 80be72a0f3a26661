"""vispec inside vLLM's tensor-parallel engine: at tensor_parallel_size=2 on the CPU backend
(two worker processes, one core each) greedy text with vispec equals the text without
speculation (vLLM with no plugin, also at TP=2), for text-only, one- and two-image prompts
in one batch, chains and trees; and
the drafts are accepted as often as at TP=1, so every rank's draft half (its heads, fed by
its own copy of the target features and per-request image state) is right."""

from __future__ import annotations

import pytest
from matrix import rows
from plain_vllm import plain_greedy
from prompts import conversations
from vllm_runs import greedy_chat, offline_llm, spec_counters, vispec_config

TREE = {"depth": 2, "top_k": 4, "total_tokens": 11, "chain_above_batch": 64,
        "off_above_batch": 64}


@pytest.fixture
def tp2(monkeypatch) -> dict:
    # vLLM's CPU workers bind OpenMP threads per rank; without a binding per rank start-up
    # fails with "Not enough allowed NUMA nodes".
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1")
    return dict(tensor_parallel_size=2, distributed_executor_backend="mp")


# LLaVA (1-D positions, chains and trees) and Qwen3-VL (M-RoPE, grouped KV heads split
# over the ranks, an explicit head_dim): between them every way the draft is sharded.
@pytest.mark.parametrize("kind", rows(["llava", "qwen3_vl"], ["qwen2_5_vl"]))
def test_vispec_at_tp2_matches_no_speculation(kind, tp2, baseline):
    convs = conversations()
    expected = plain_greedy(kind, convs, **tp2)
    speculative = {"chain": vispec_config(kind, 3)}
    if kind == "llava":
        speculative["tree"] = vispec_config(kind, 2, tree=TREE)
    accepted = {}
    for drafting, spec in speculative.items():
        with offline_llm(kind, spec, **tp2) as llm:
            got = greedy_chat(llm, convs)
            counters = spec_counters(llm)
        del llm
        for name in convs:
            assert got[name][0] == expected[name][0], f"{name} differs at TP=2 ({drafting})"
        assert 0 < counters["num_accepted_tokens"] < counters["num_draft_tokens"], drafting
        accepted[drafting] = counters["num_accepted_tokens"]
    with offline_llm(kind, speculative["chain"]) as llm:
        greedy_chat(llm, convs)
        accepted_tp1 = spec_counters(llm)["num_accepted_tokens"]
    del llm
    assert accepted["chain"] == pytest.approx(accepted_tp1, rel=0.02)
    # And TP=2 answers as TP=1 does on these targets.
    tp1 = baseline(kind)
    assert all(expected[name][0] == tp1[name][0] for name in convs)
