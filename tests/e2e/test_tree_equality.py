"""Tree speculation (EAGLE-2 dynamic trees, verified in one target forward) is lossless:
greedy text equals the text without speculation, batched and alone, for text-only,
single- and multi-image prompts on both tiny targets."""

from __future__ import annotations

import pytest
from prompts import conversations
from vllm_runs import greedy_chat, offline_llm, spec_counters, vispec_config

TREE = {"depth": 2, "top_k": 4, "total_tokens": 11}
PAPER_TREE = {"depth": 3, "top_k": 8, "total_tokens": 30}  # 4 levels, 29 nodes + the root


def drafter_of(llm):
    return llm.llm_engine.model_executor.driver_worker.worker.model_runner.drafter


@pytest.mark.parametrize("kind,shape", [("llava", TREE), ("qwen2_5_vl", TREE),
                                        ("qwen3_vl", TREE), ("llava", PAPER_TREE)],
                         ids=["llava", "qwen2_5_vl", "qwen3_vl", "llava-paper-tree"])
def test_trees_match_no_speculation(kind, shape, baseline):
    expected = baseline(kind)
    convs = conversations()
    tree = {**shape, "chain_above_batch": 64, "off_above_batch": 64}  # trees for the batch too
    with offline_llm(kind, vispec_config(kind, 2, tree=tree)) as llm:
        batched = greedy_chat(llm, convs)
        single = {}
        for name, conv in convs.items():
            single.update(greedy_chat(llm, {name: conv}))
        counters = spec_counters(llm)
        modes = dict(drafter_of(llm).mode_counts)
    for name in convs:
        assert batched[name][0] == expected[name][0], f"{name} (batched) differs"
        assert single[name][0] == expected[name][0], f"{name} (alone) differs"
    assert modes["tree"] > 0 and modes["chain"] == 0
    assert 0 < counters["num_accepted_tokens"] < counters["num_draft_tokens"]


def test_chain_under_load_then_tree_alone(baseline):
    """Above chain_above_batch running requests the step drafts a chain; alone, a tree;
    above off_above_batch nothing. Output stays identical throughout."""
    expected = baseline("llava")
    convs = conversations()
    tree = {**TREE, "chain_above_batch": 1, "off_above_batch": 3}
    names = list(convs)
    with offline_llm("llava", vispec_config("llava", 2, tree=tree)) as llm:
        drafter = drafter_of(llm)
        got = greedy_chat(llm, convs)  # more than 3 running: no speculation
        after_batch = dict(drafter.mode_counts)
        got.update(greedy_chat(llm, {n: convs[n] for n in names[:2]}))  # 2: chains
        after_pair = dict(drafter.mode_counts)
        got.update(greedy_chat(llm, {names[2]: convs[names[2]]}))  # alone: trees
        modes = dict(drafter.mode_counts)
    assert len(convs) > 3
    for name in convs:
        assert got[name][0] == expected[name][0], f"{name} differs"
    # (A step's batch is what was scheduled in it: the first and last steps of a batch may
    # be smaller, so each phase may also see the smaller batches' modes.)
    assert after_batch["off"] > 0
    assert after_pair["chain"] > after_batch["chain"]
    assert modes["tree"] > after_pair["tree"]


SCHEDULES = {
    # 12 tokens a step for up to 4 requests: images split across steps.
    "chunked-prefill": dict(max_num_batched_tokens=12, max_num_seqs=4),
    # A KV cache of a few blocks: requests are preempted and recomputed mid-tree.
    "preempted": dict(max_model_len=192, block_size=32, num_gpu_blocks_override=8),
}


@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_trees_survive_chunks_and_preemption(schedule, baseline):
    expected = baseline("llava")
    convs = conversations()
    tree = {**TREE, "chain_above_batch": 64, "off_above_batch": 64}
    with offline_llm("llava", vispec_config("llava", 2, tree=tree),
                     **SCHEDULES[schedule]) as llm:
        got = greedy_chat(llm, convs)
        preemptions = sum(m.value for m in llm.get_metrics()
                          if m.name == "vllm:num_preemptions")
        modes = dict(drafter_of(llm).mode_counts)
    for name in convs:
        assert got[name][0] == expected[name][0], f"{name} differs ({schedule})"
    assert modes["tree"] > 0
    assert (preemptions > 0) == (schedule == "preempted")
