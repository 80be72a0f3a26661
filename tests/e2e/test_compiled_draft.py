"""The draft compiled through vLLM's torch.compile integration (what runs when vLLM is
not started with --enforce-eager): the draft model really goes through vLLM's compile
path, its attention stays one registered op, and greedy text still equals vLLM's without
speculation and without the plugin."""

from __future__ import annotations

from prompts import conversations
from vllm_runs import greedy_chat, offline_llm, spec_counters, vispec_config

from vllm_vispec.host_syncs import drafter_of


def test_compiled_draft_matches_no_speculation(baseline):
    expected = baseline("llava")
    convs = conversations()
    with offline_llm("llava", vispec_config("llava", 3), enforce_eager=False) as llm:
        got = greedy_chat(llm, convs)
        counters = spec_counters(llm)
        draft = drafter_of(llm).model.model
        compiled = (not draft.do_not_compile, draft.compiled)
    assert compiled == (True, True), compiled
    for name in convs:
        assert got[name][0] == expected[name][0], name
    assert 0 < counters["num_accepted_tokens"] < counters["num_draft_tokens"]
