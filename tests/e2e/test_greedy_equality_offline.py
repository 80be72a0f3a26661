"""Lossless output offline: greedy vispec text == greedy text of vLLM without speculation
and without any plugin (the baseline fixture)."""

from __future__ import annotations

import pytest
from prompts import conversations
from vllm_runs import greedy_chat, offline_llm, spec_counters, vispec_config


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("kind", ["llava", "qwen2_5_vl", "qwen3_vl"])
def test_vispec_matches_no_speculation(kind, k, baseline):
    expected = baseline(kind)
    convs = conversations()
    with offline_llm(kind, vispec_config(kind, k)) as llm:
        batched = greedy_chat(llm, convs)
        single = {}
        for name, conv in convs.items():
            single.update(greedy_chat(llm, {name: conv}))
        counters = spec_counters(llm)
        drafter = llm.llm_engine.model_executor.driver_worker.worker.model_runner.drafter
        had_image_state = bool(drafter.image_store.per_request)
        greedy_chat(llm, {"after": convs["text"]})  # a later step frees ended requests
        leftover = set(drafter.image_store.per_request)

    assert len(convs) >= 4  # a batch of at least four concurrent requests
    for name in convs:
        assert batched[name][0] == expected[name][0], f"{name} (batched) differs"
        assert single[name][0] == expected[name][0], f"{name} (alone) differs"
    # The draft really ran and some drafts were accepted, so multi-token acceptance and
    # rejection both happened on the way to identical output.
    assert counters["num_draft_tokens"] > 0
    assert 0 < counters["num_accepted_tokens"] < counters["num_draft_tokens"]
    assert len(counters["num_accepted_tokens_per_pos"]) == k
    # Image state existed for the image requests and was freed once they ended.
    assert had_image_state and not leftover
