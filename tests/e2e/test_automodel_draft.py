"""Drafts in NeMo Automodel's checkpoint layout, served.

* Automodel's own architecture (input norm on layer 0, final norm, no fc/img_fc bias,
  sharded export) is lossless: greedy text equals vLLM's without speculation and without
  the plugin, and its drafts equal, token for token and logit for logit, those of a
  pure-PyTorch oracle of Automodel's draft fed what vLLM fed the draft.
* Trees work with it as with a published draft (the tree step runs the same model).
* A released draft converted to Automodel's layout drafts exactly what the published
  checkpoint drafts.
"""

from __future__ import annotations

import pytest
import torch
from prompts import conversations
from test_draft_fidelity import DraftRecorder, check_against_reference
from vllm_runs import greedy_chat, greedy_params, offline_llm, spec_counters, vispec_config

from vllm_vispec.tiny import tiny_draft

K = 3


@pytest.mark.parametrize("kind", ["llava", "qwen2_5_vl"])
def test_automodel_draft_is_lossless(kind, baseline):
    expected = baseline(kind)
    convs = conversations()
    draft = tiny_draft(kind, layout="automodel")
    with offline_llm(kind, vispec_config(kind, K, model=str(draft))) as llm:
        got = greedy_chat(llm, convs)
        counters = spec_counters(llm)
    for name in convs:
        assert got[name][0] == expected[name][0], f"{name} differs"
    assert 0 < counters["num_accepted_tokens"] < counters["num_draft_tokens"]


def test_automodel_draft_matches_its_reference(monkeypatch):
    # check_against_reference holds a draft with Automodel's norms to AutomodelReference.
    check_against_reference("llava", "whole-prefill", tiny_draft("llava", layout="automodel"),
                            monkeypatch)


def proposals(kind: str, draft_dir, rec: DraftRecorder) -> list[dict]:
    rec.proposals = []
    spec = vispec_config(kind, K, model=str(draft_dir))
    with offline_llm(kind, spec) as llm:
        llm.chat(list(conversations().values()), greedy_params(), use_tqdm=False)
    return rec.proposals  # in draft-step order, the same for the same schedule


def test_released_draft_in_automodel_layout_drafts_what_the_published_one_does(monkeypatch):
    rec = DraftRecorder(monkeypatch)  # one: a second would record through the first
    published = proposals("llava", tiny_draft("llava"), rec)
    converted = proposals("llava", tiny_draft("llava", layout="automodel-released"), rec)
    assert len(published) == len(converted) > 0
    for a, b in zip(published, converted):
        assert (a["position"], a["tokens"]) == (b["position"], b["tokens"])
        torch.testing.assert_close(a["logits"], b["logits"], rtol=0, atol=1e-6)


def test_automodel_draft_grows_lossless_trees(baseline):
    expected = baseline("qwen2_5_vl")
    tree = {"depth": 2, "top_k": 4, "total_tokens": 11, "chain_above_batch": 64,
            "off_above_batch": 64}
    draft = tiny_draft("qwen2_5_vl", layout="automodel")
    spec = vispec_config("qwen2_5_vl", 2, model=str(draft), tree=tree)
    with offline_llm("qwen2_5_vl", spec) as llm:
        got = greedy_chat(llm, conversations())
        counters = spec_counters(llm)
        modes = dict(llm.llm_engine.model_executor.driver_worker.worker.model_runner
                     .drafter.mode_counts)
    for name in got:
        assert got[name][0] == expected[name][0], f"{name} differs"
    assert modes["tree"] > 0
    assert 0 < counters["num_accepted_tokens"] < counters["num_draft_tokens"]
