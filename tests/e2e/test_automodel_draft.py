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
import test_draft_fidelity
import torch
import torch.nn.functional as F
from prompts import conversations
from test_draft_fidelity import DraftRecorder, check_against_reference
from vllm_runs import greedy_chat, greedy_params, offline_llm, spec_counters, vispec_config

from vllm_vispec.model.checkpoint import load_draft_weights
from vllm_vispec.reference import ReferenceDraft, linear, rms_norm, rope
from vllm_vispec.tiny import tiny_draft

K = 3


class AutomodelReference(ReferenceDraft):
    """Automodel's decoder layer, from its EAGLE-1/2 draft: RMSNorm before attention (the
    residual is the un-normed input), and the draft's final RMSNorm on the layer's output,
    which is both the next step's feature and what the lm_head scores."""

    def layer(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        w, d = self.weights, self.dims
        p = "layers.0.self_attn"
        n = x.shape[0]
        hn = rms_norm(x, w["layers.0.input_layernorm.weight"], d.rms_norm_eps)
        q = rope(linear(w, f"{p}.q_proj", hn).view(n, d.num_heads, d.head_dim), positions,
                 d.rope_theta)
        k = rope(linear(w, f"{p}.k_proj", hn).view(n, d.num_kv_heads, d.head_dim), positions,
                 d.rope_theta)
        self.keys.append(k)
        self.values.append(linear(w, f"{p}.v_proj", hn).view(n, d.num_kv_heads, d.head_dim))
        repeat = d.num_heads // d.num_kv_heads
        keys = torch.cat(self.keys).repeat_interleave(repeat, dim=1)
        values = torch.cat(self.values).repeat_interleave(repeat, dim=1)
        total = keys.shape[0]
        scores = torch.einsum("qhd,khd->hqk", q, keys) * d.head_dim ** -0.5
        visible = (torch.arange(total)[None, :] <= (total - n + torch.arange(n))[:, None])
        scores = scores.masked_fill(~visible[None], float("-inf"))
        attn = torch.einsum("hqk,khd->qhd", scores.softmax(-1), values).reshape(n, -1)
        r = linear(w, f"{p}.o_proj", attn) + x
        hn = rms_norm(r, w["layers.0.post_attention_layernorm.weight"], d.rms_norm_eps)
        out = linear(w, "layers.0.mlp.down_proj",
                     F.silu(linear(w, "layers.0.mlp.gate_proj", hn))
                     * linear(w, "layers.0.mlp.up_proj", hn)) + r
        return rms_norm(out, w["norm.weight"], d.rms_norm_eps)


def float_weights(draft_dir):
    dims, state = load_draft_weights(draft_dir)
    return dims, {k: v.float() for k, v in state.items()}


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
    monkeypatch.setattr(test_draft_fidelity, "ReferenceDraft", AutomodelReference)
    monkeypatch.setattr(test_draft_fidelity, "draft_weights", float_weights)
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
