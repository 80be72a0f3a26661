"""The plugin's draft computes ViSpec's draft: at every draft step, its tokens and logits
equal the pure-PyTorch reference's.

The reference is fed the target features vLLM computed (recorded per position, so any
target numerics cancel out), the true token sequence, and whole images; it knows nothing of
paging, batching or chunks. Covers text-only, one- and two-image prompts in one mixed
batch, and chunked prefill small enough to split images across steps.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from automodel_reference import reference_for
from hf_target import image_spans, target_features
from prompts import conversation_images, conversations
from safetensors.torch import load_file, save_file
from vllm_runs import greedy_params, offline_llm, vispec_config

from vllm_vispec.draft_metadata import first_pass_positions, token_requests
from vllm_vispec.model.checkpoint import load_draft_weights
from vllm_vispec.proposer import VispecProposer
from vllm_vispec.tiny import tiny_draft
from vllm_vispec.tiny.targets import RESIDUAL_SCALE

NUM_SPEC = 3
LOGIT_TOL = 1e-4  # fp32; same inputs, different summation order


class DraftRecorder:
    """Records what the draft saw (target feature and slot embedding per position) and
    what it proposed (sampled position, tokens and logits) for every request."""

    def __init__(self, monkeypatch):
        self.features: dict[str, dict[int, tuple[torch.Tensor, torch.Tensor]]] = {}
        self.proposals: list[dict] = []
        propose = VispecProposer.propose
        first_pass = VispecProposer.build_model_inputs_first_pass
        sample = VispecProposer._sample_draft_tokens
        rec = self

        def recording_propose(proposer, **kw):  # vLLM's runner passes keywords only
            cad = kw["common_attn_metadata"]
            target_hidden_states = kw["target_hidden_states"]
            n = kw["target_token_ids"].shape[0]
            sample_at = kw["token_indices_to_sample"]
            sample_at = (sample_at if sample_at is not None
                         else cad.query_start_loc[1:] - 1).long()
            positions = first_pass_positions(
                cad.seq_lens, cad.query_start_loc,
                token_requests(cad.query_start_loc, cad.num_reqs, n), cad.num_reqs)
            qsl = cad.query_start_loc_cpu.tolist()
            req_ids = list(proposer.vispec_runner.input_batch.req_ids[:cad.num_reqs])
            proposer.recorded_logits = []
            tokens = propose(proposer, **kw)
            slot_embeds = proposer.recorded_slot_embeds
            logits = torch.stack(proposer.recorded_logits, dim=1)  # [reqs, steps, vocab]
            for r, req_id in enumerate(req_ids):
                feats = rec.features.setdefault(req_id, {})
                for t in range(qsl[r], qsl[r + 1]):  # later steps overwrite rejected ones
                    feats[int(positions[t])] = (target_hidden_states[t].float().clone(),
                                                slot_embeds[t])
                rec.proposals.append(dict(req_id=req_id, position=int(positions[sample_at[r]]),
                                          tokens=tokens[r].tolist(),
                                          logits=logits[r].float()))
            return tokens

        def recording_first_pass(proposer, num_tokens, num_input_tokens, mm_embed_inputs):
            out = first_pass(proposer, num_tokens, num_input_tokens, mm_embed_inputs)
            proposer.recorded_slot_embeds = proposer.inputs_embeds[:num_tokens].float().clone()
            return out

        def recording_sample(proposer, hidden_states, sampling_metadata):
            proposer.recorded_logits.append(proposer.model.compute_logits(hidden_states))
            return sample(proposer, hidden_states, sampling_metadata)

        monkeypatch.setattr(VispecProposer, "propose", recording_propose)
        monkeypatch.setattr(VispecProposer, "build_model_inputs_first_pass",
                            recording_first_pass)
        monkeypatch.setattr(VispecProposer, "_sample_draft_tokens", recording_sample)

    def reference_inputs(self, req_id, seq, p, image_positions, embed):
        """Target features of tokens 0..p and input embeddings (images merged)."""
        feats = self.features[req_id]
        hidden = torch.stack([feats[j][0] for j in range(p + 1)])
        embeds = embed[torch.tensor(seq[:p + 1])].clone()
        for t in range(1, p + 1):
            if t in image_positions:  # slot t-1 carried token t's image embedding
                embeds[t] = feats[t - 1][1]
        return embeds, hidden


def draft_weights(draft_dir):
    """Dims and fp32 tensors, under the published names, of a draft in any layout."""
    dims, state = load_draft_weights(draft_dir)
    return dims, {k: v.float() for k, v in state.items()}


def draft_with_strong_paths(kind: str, out):
    """The tiny draft with an ``img_fc`` that really mixes the global vector in (the
    published initialisation, ``[I | 0]``, ignores it), biases on ``fc`` and ``img_fc``,
    and its attention output at full scale (the tiny draft damps it, so that drafts get
    accepted): any error in the global vector's or the attention's path shows in logits."""
    src = tiny_draft(kind)
    weights = load_file(src / "model.safetensors")
    g = torch.Generator().manual_seed(7)
    h = weights["img_fc.weight"].shape[0]
    weights["img_fc.weight"][:, h:] = torch.randn(h, h, generator=g) * 0.05
    weights["img_fc.bias"] = torch.randn(h, generator=g) * 0.05
    weights["fc.bias"] = torch.randn(h, generator=g) * 0.05
    weights["layers.0.self_attn.o_proj.weight"] /= RESIDUAL_SCALE
    for name in ("q_proj", "k_proj"):  # peaked attention: every key read counts
        weights[f"layers.0.self_attn.{name}.weight"] *= 8
    out.mkdir()
    shutil.copy(src / "config.json", out / "config.json")
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    return out


def request_key(req_id: str, outputs) -> int:
    (i,) = [i for i, o in enumerate(outputs)
            if req_id == o.request_id or req_id.startswith(o.request_id + "-")]
    return i


def checkable_proposals(proposals, outputs, kind: str):
    """(proposal, request index, true sequence, image spans, image positions) of every
    recorded draft step the reference can be held to: drafts of a chunk that ends inside an
    image are discarded by vLLM, and the last step's drafts may run past the finished
    request."""
    for prop in proposals:
        i = request_key(prop["req_id"], outputs)
        seq = list(outputs[i].prompt_token_ids) + list(outputs[i].outputs[0].token_ids)
        spans = image_spans(kind, seq)
        image_positions = {t for s in spans for t in range(s.start, s.end)}
        p = prop["position"]
        if p + 2 > len(seq) or (p + 1) in image_positions:
            continue
        yield prop, i, seq, spans, image_positions


CHUNKED = dict(max_num_batched_tokens=12, max_num_seqs=4)
SCHEDULES = {  # name: (engine arguments, extra speculative-config keys)
    "whole-prefill": ({}, {}),
    # 12 tokens a step for up to 4 requests: every image is split across steps.
    "chunked-prefill": (CHUNKED, {}),
    # The same without vLLM's padded drafter batch (rejected tokens removed up front).
    "chunked-unpadded": (CHUNKED, {"disable_padded_drafter_batch": True}),
    # A KV cache of a few blocks: requests are preempted and recomputed, and their image
    # state must come back right.
    "preempted": (dict(max_model_len=192, block_size=32, num_gpu_blocks_override=8), {}),
}


@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("kind", ["llava", "qwen2_5_vl", "qwen3_vl"])
def test_draft_tokens_and_logits_match_the_reference(kind, schedule, monkeypatch):
    check_against_reference(kind, schedule, tiny_draft(kind), monkeypatch)


@pytest.mark.parametrize("schedule", ["whole-prefill", "chunked-prefill"])
def test_strong_attention_and_image_vector_match_the_reference(schedule, monkeypatch,
                                                               tmp_path):
    # The global vector's path (img_fc, folded at load time into a per-image bias) and the
    # attention with weights that make them count.
    draft = draft_with_strong_paths("llava", tmp_path / "draft")
    check_against_reference("llava", schedule, draft, monkeypatch, tol=1e-5)


def check_against_reference(kind, schedule, draft_dir, monkeypatch, tol=LOGIT_TOL):
    rec = DraftRecorder(monkeypatch)
    convs = conversations()
    engine_args, spec_extra = SCHEDULES[schedule]
    spec = vispec_config(kind, NUM_SPEC, **spec_extra, model=str(draft_dir))
    with offline_llm(kind, spec, **engine_args) as llm:
        outputs = llm.chat(list(convs.values()), greedy_params(), use_tqdm=False)
        preemptions = sum(m.value for m in llm.get_metrics()
                          if m.name == "vllm:num_preemptions")
        target = llm.llm_engine.model_executor.driver_worker.worker.model_runner.model
        lm_head = target.get_language_model().lm_head.weight.float()
        embed = target.get_language_model().model.embed_tokens.weight.float()
    dims, weights = draft_weights(draft_dir)
    names = list(convs)

    checked = {name: 0 for name in names}
    worst = 0.0
    for prop, i, seq, spans, image_positions in checkable_proposals(rec.proposals, outputs,
                                                                     kind):
        p = prop["position"]
        embeds, hidden = rec.reference_inputs(prop["req_id"], seq, p, image_positions, embed)
        ref = reference_for(weights, dims, lm_head, embed)
        tokens, logits = ref.propose(embeds, hidden, seq[p + 1],
                                     [s for s in spans if s.end <= p + 1], NUM_SPEC)
        # A chunk of a prompt still in prefill: vLLM keeps the draft's KV of this pass but
        # discards its drafts, whose later steps may run over the prompt's image slots.
        steps = 1 if p + 1 < len(outputs[i].prompt_token_ids) else NUM_SPEC
        ref_logits = torch.stack(logits)[:steps]
        diff = (prop["logits"][:steps] - ref_logits).abs().max().item()
        worst = max(worst, diff)
        assert diff <= tol * max(1.0, ref_logits.abs().max().item()), (names[i], p, diff)
        for step in range(steps):
            top2 = ref_logits[step].topk(2).values
            if (top2[0] - top2[1]).item() > 10 * tol:  # not a near tie
                assert prop["tokens"][step] == tokens[step], (names[i], p, step)
        checked[names[i]] += 1
    assert all(n >= 5 for n in checked.values()), checked
    assert (preemptions > 0) == (schedule == "preempted"), preemptions
    print(f"{kind} {schedule}: checked {checked}, worst logit diff {worst:.2e}, "
          f"preemptions {preemptions}")


@pytest.mark.parametrize("kind", ["llava", "qwen3_vl"])
def test_draft_consumes_the_targets_features(kind, monkeypatch):
    """What vLLM hands the draft, checked against HF transformers on an image prompt: the
    target's post-norm last hidden states, and at image tokens the target's embedding-layer
    output (on Qwen3-VL the main visual feature, not the DeepStack ones vLLM's encoder
    output also holds)."""
    rec = DraftRecorder(monkeypatch)
    convs = {"one_image": conversations()["one_image"]}
    with offline_llm(kind, vispec_config(kind, NUM_SPEC)) as llm:
        (out,) = llm.chat(list(convs.values()), greedy_params(), use_tqdm=False)
    seq = list(out.prompt_token_ids) + list(out.outputs[0].token_ids)
    hf_embeds, hf_hidden, _, _ = target_features(kind, seq, conversation_images()["one_image"])
    (feats,) = rec.features.values()
    ours = torch.stack([feats[j][0] for j in range(len(seq) - 1)])
    torch.testing.assert_close(ours, hf_hidden[:len(seq) - 1], rtol=1e-3, atol=1e-3)
    (span,) = image_spans(kind, seq)
    image_tokens = range(span.start, span.end)
    # Slot t - 1 carries token t's input embedding (EAGLE's shift).
    ours = torch.stack([feats[t - 1][1] for t in image_tokens])
    torch.testing.assert_close(ours, hf_embeds[span.start:span.end], rtol=1e-4, atol=1e-5)
