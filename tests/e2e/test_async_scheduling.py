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


def test_trees_without_vllms_schedule_are_refused_under_async_scheduling(
        async_scheduling_on_cpu):
    # Async scheduling reserves the tree's nodes every step unless vLLM's dynamic schedule
    # says otherwise; a step that drafted a shorter chain (batch above chain_above_batch)
    # returned fewer columns and GPUModelRunner._prepare_input_ids indexed past them
    # (IndexError). Refused at start-up instead, with the settings to change.
    tree = {**TREE, "chain_above_batch": 1}
    with pytest.raises(Exception, match="num_speculative_tokens_per_batch_size.*"
                                        "--no-async-scheduling"):
        with offline_llm("llava", vispec_config("llava", 3, tree=tree), async_scheduling=True):
            pass


def test_trees_follow_vllms_schedule_under_async_scheduling(baseline,
                                                             async_scheduling_on_cpu):
    # A tree alone (K = the tree's 8 nodes), a chain of 3 for 2-8 running requests: the
    # scheduler reserves what each step drafts. Tree tokens reach the target from the
    # drafter; the scheduler only holds placeholders.
    from vllm import SamplingParams
    expected = baseline("llava")
    schedule = [[1, 1, TREE["total_tokens"] - 1], [2, 8, 3]]
    spec = vispec_config("llava", 3, tree=TREE, num_speculative_tokens_per_batch_size=schedule)
    convs = conversations()
    with offline_llm("llava", spec, async_scheduling=True) as llm:
        assert_async_engine(llm)
        drafter = llm.llm_engine.model_executor.driver_worker.worker.model_runner.drafter
        batched = greedy_chat(llm, convs)
        modes_batched = dict(drafter.mode_counts)
        alone = {name: greedy_chat(llm, {name: conv})[name] for name, conv in convs.items()}
        modes = dict(drafter.mode_counts)
        # Logprobs: trees do not verify them, so the step drafts a chain in a step
        # reserved for the tree (filled up to the reservation).
        name, conv = next(iter(convs.items()))
        params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True, logprobs=1)
        with_logprobs = list(llm.chat([conv], params, use_tqdm=False)[0].outputs[0].token_ids)
    for name in expected:
        assert batched[name][0] == expected[name][0], f"{name} differs (batched)"
        assert alone[name][0] == expected[name][0], f"{name} differs (alone)"
    assert with_logprobs == expected[next(iter(convs))][0]
    assert modes_batched["chain"] > 0
    assert modes["tree"] > 0
