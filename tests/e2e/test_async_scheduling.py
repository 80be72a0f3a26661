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

TREE = {"depth": 2, "top_k": 4, "total_tokens": 9}


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


def assert_async_engine(llm) -> None:
    from vllm.v1.core.sched.async_scheduler import AsyncScheduler
    assert llm.llm_engine.vllm_config.scheduler_config.async_scheduling is True
    core = llm.llm_engine.engine_core.engine_core
    assert isinstance(core.scheduler, AsyncScheduler)
    assert core.batch_queue is not None  # the engine core overlaps two steps
    runner = llm.llm_engine.model_executor.driver_worker.worker.model_runner
    assert runner.use_async_scheduling


def test_chain_greedy_equal_under_async_scheduling(baseline, async_scheduling_on_cpu):
    expected = baseline("llava")
    with offline_llm("llava", vispec_config("llava", 3), async_scheduling=True) as llm:
        assert_async_engine(llm)
        got = greedy_chat(llm, conversations())
        counters = spec_counters(llm)
    for name in expected:
        assert got[name][0] == expected[name][0], f"{name} differs"
    assert 0 < counters["num_accepted_tokens"] <= counters["num_draft_tokens"]


def test_tree_config_is_refused_under_async_scheduling(async_scheduling_on_cpu):
    # Async scheduling reserves the tree's total_tokens placeholders every step; a step
    # that drafts a shorter chain (batch above chain_above_batch, or sampling trees do not
    # verify) returned fewer columns and GPUModelRunner._prepare_input_ids indexed past
    # them (IndexError). Refused at start-up instead, with the setting to change. (That
    # tree verification reads the drafter's tokens, never the scheduler's placeholders, is
    # tests/unit/test_tree_target_step.py.)
    tree = {**TREE, "chain_above_batch": 1}
    with pytest.raises(Exception, match="--no-async-scheduling"):
        with offline_llm("llava", vispec_config("llava", 3, tree=tree), async_scheduling=True):
            pass
