"""vispec under async scheduling, vLLM's default on GPUs.

Under async scheduling the scheduler does not wait for the drafter: the draft tokens it
schedules are -1 placeholders and the runner fills in the drafter's real tokens on the
device. Nothing of vispec may read the placeholders' values. vLLM's CPU platform turns
async scheduling off (``CpuPlatform.check_and_update_config``); these tests turn it back
on inside the test process only (the engine core runs in this process), which vLLM's
classic runner on CPU runs (its CUDA streams and events are CPU no-ops there).
"""

from __future__ import annotations

import pytest
from prompts import conversations
from vllm_runs import greedy_chat, offline_llm, spec_counters, vispec_config

TREE = {"depth": 3, "top_k": 4, "total_tokens": 8}


@pytest.fixture
def async_scheduling_on_cpu(monkeypatch):
    """Keeps ``async_scheduling=True`` through the CPU platform's config hook."""
    from vllm.platforms.cpu import CpuPlatform
    original = CpuPlatform.check_and_update_config.__func__

    def check_and_update_config(cls, vllm_config):
        wanted = vllm_config.scheduler_config.async_scheduling
        original(cls, vllm_config)
        if wanted:
            vllm_config.scheduler_config.async_scheduling = True

    monkeypatch.setattr(CpuPlatform, "check_and_update_config",
                        classmethod(check_and_update_config))


@pytest.fixture
def tree_step_spec_tokens(monkeypatch):
    """Every scheduler draft-token value the tree verifier was handed."""
    from vllm_vispec.tree.target_step import TreeStep
    seen: list[int] = []
    original = TreeStep.build.__func__

    def build(cls, spec_tokens, *args, **kwargs):
        for tokens in spec_tokens.values():
            seen.extend(tokens)
        return original(cls, spec_tokens, *args, **kwargs)

    monkeypatch.setattr(TreeStep, "build", classmethod(build))
    return seen


def assert_async_engine(llm) -> None:
    from vllm.v1.core.sched.async_scheduler import AsyncScheduler
    assert llm.llm_engine.vllm_config.scheduler_config.async_scheduling is True
    core = llm.llm_engine.engine_core.engine_core
    assert isinstance(core.scheduler, AsyncScheduler)
    assert core.batch_queue is not None  # the engine core overlaps two steps
    runner = llm.llm_engine.model_executor.driver_worker.worker.model_runner
    assert runner.use_async_scheduling


@pytest.mark.parametrize("tree", [None, {**TREE, "chain_above_batch": 8}],
                         ids=["chain", "tree"])
def test_greedy_equal_under_async_scheduling(tree, baseline, async_scheduling_on_cpu,
                                             tree_step_spec_tokens):
    expected = baseline("llava")
    extra = {"tree": tree} if tree else {}
    # Trees for the whole batch: a step that falls back to a chain is another test.
    with offline_llm("llava", vispec_config("llava", 3, **extra),
                     async_scheduling=True) as llm:
        assert_async_engine(llm)
        got = greedy_chat(llm, conversations())
        counters = spec_counters(llm)
        modes = dict(llm.llm_engine.model_executor.driver_worker.worker.model_runner
                     .drafter.mode_counts)
    for name in expected:
        assert got[name][0] == expected[name][0], f"{name} differs"
    assert 0 < counters["num_accepted_tokens"] <= counters["num_draft_tokens"]
    if tree:
        assert modes["tree"] > 0 and modes["chain"] == 0
        # The verifier was handed placeholders only, and still accepted drafts: its
        # tokens came from the drafter.
        assert tree_step_spec_tokens and set(tree_step_spec_tokens) == {-1}
    else:
        assert modes["chain"] > 0


@pytest.mark.xfail(raises=IndexError, strict=True, reason=(
    "async scheduling schedules num_speculative_tokens (the tree's total_tokens) "
    "placeholders per request every step; a step that drafts a shorter chain (batch above "
    "chain_above_batch) returns fewer columns and GPUModelRunner._prepare_input_ids "
    "indexes past them"))
def test_tree_config_falling_back_to_chain_under_async_scheduling(
        baseline, async_scheduling_on_cpu):
    expected = baseline("llava")
    with offline_llm("llava", vispec_config("llava", 3, tree={**TREE, "chain_above_batch": 1}),
                     async_scheduling=True) as llm:
        assert_async_engine(llm)
        got = greedy_chat(llm, conversations())  # 5 requests: chains of 3, not 8
    for name in expected:
        assert got[name][0] == expected[name][0], f"{name} differs"
