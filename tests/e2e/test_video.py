"""Videos on the tiny Qwen2.5-VL target: each video is one compressed span, like an image
(as in the authors' code); prompts mixing images and videos are refused.

- greedy output equals plugin-free vLLM's, for video prompts batched with an image prompt
  and alone, and every video got its own summary;
- the draft's tokens and logits equal the pure-PyTorch reference's, fed each video as one
  span, with prefill chunks that split the videos across steps;
- a prompt with an image and a video is refused with the reason, and the engine goes on.
"""

from __future__ import annotations

import pytest
import torch
from plain_vllm import plain_greedy
from prompts import image_and_video_conversation, video_conversations
from test_draft_fidelity import (NUM_SPEC, SCHEDULES, DraftRecorder, draft_weights,
                                 draft_with_strong_paths, request_key)
from video_target import video_chat_target, video_token_id
from vllm.exceptions import VLLMValidationError
from vllm_runs import greedy_chat, greedy_params, offline_llm, spec_counters, vispec_config

from vllm_vispec.reference import ReferenceDraft
from vllm_vispec.train.target_features import image_spans, image_token_id

KIND = "qwen2_5_vl"
TOL = 1e-5  # fp32 logits, relative; the strong-path image test's tolerance


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    return video_chat_target(tmp_path_factory.mktemp("video-target") / "qwen2_5_vl")


def test_video_prompts_match_plain_vllm_and_mixed_prompts_are_refused(target):
    convs = video_conversations()
    expected = plain_greedy(KIND, convs, model=str(target))
    with offline_llm(KIND, vispec_config(KIND, 3), model=str(target)) as llm:
        batched = greedy_chat(llm, convs)
        single = {}
        for name, conv in convs.items():
            single.update(greedy_chat(llm, {name: conv}))
        counters = spec_counters(llm)
        drafter = llm.llm_engine.model_executor.driver_worker.worker.model_runner.drafter
        summarized = len(drafter.image_store.by_content)
        with pytest.raises(VLLMValidationError, match="images or with videos, not both"):
            llm.chat([image_and_video_conversation()], greedy_params(), use_tqdm=False)
        after = greedy_chat(llm, {"one_video": convs["one_video"]})

    for name in convs:
        assert batched[name][0] == expected[name][0], f"{name} (batched) differs"
        assert single[name][0] == expected[name][0], f"{name} (alone) differs"
    assert after["one_video"][0] == expected["one_video"][0]
    assert counters["num_draft_tokens"] > 0
    assert 0 < counters["num_accepted_tokens"] < counters["num_draft_tokens"]
    # One summary per video and per image, by content: the videos were compressed.
    assert summarized == 3, summarized


def media_spans(target, seq):
    """The image and video spans of a token sequence, in prompt order (each video one
    span, as the authors' code marks a video's tokens as an image's)."""
    spans = image_spans(seq, image_token_id(target)) + image_spans(seq, video_token_id(target))
    return sorted(spans, key=lambda s: s.start)


def test_video_drafts_match_the_reference(target, monkeypatch, tmp_path):
    # Prefill chunks of 12 tokens split every video (27 and 32 tokens) across steps; the
    # draft with strong paths makes the video's global vector and compressed token count.
    rec = DraftRecorder(monkeypatch)
    convs = video_conversations()
    draft = draft_with_strong_paths(KIND, tmp_path / "draft")
    engine_args, _ = SCHEDULES["chunked-prefill"]
    with offline_llm(KIND, vispec_config(KIND, NUM_SPEC, model=str(draft)),
                     model=str(target), **engine_args) as llm:
        outputs = llm.chat(list(convs.values()), greedy_params(), use_tqdm=False)
        model = llm.llm_engine.model_executor.driver_worker.worker.model_runner.model
        lm_head = model.get_language_model().lm_head.weight.float()
        embed = model.get_language_model().model.embed_tokens.weight.float()
    dims, weights = draft_weights(draft)
    names = list(convs)

    checked = {name: 0 for name in names}
    worst = 0.0
    after_video = {name: 0 for name in names}  # checked drafts that read a video's summary
    for prop in rec.proposals:
        i = request_key(prop["req_id"], outputs)
        prompt_len = len(outputs[i].prompt_token_ids)
        seq = list(outputs[i].prompt_token_ids) + list(outputs[i].outputs[0].token_ids)
        spans = media_spans(target, seq)
        positions = {t for s in spans for t in range(s.start, s.end)}
        p = prop["position"]
        if p + 2 > len(seq) or (p + 1) in positions:
            continue  # drafts vLLM discards (see test_draft_fidelity.checkable_proposals)
        embeds, hidden = rec.reference_inputs(prop["req_id"], seq, p, positions, embed)
        ref = ReferenceDraft(weights, dims, lm_head, embed)
        tokens, logits = ref.propose(embeds, hidden, seq[p + 1],
                                     [s for s in spans if s.end <= p + 1], NUM_SPEC)
        steps = 1 if p + 1 < prompt_len else NUM_SPEC
        ref_logits = torch.stack(logits)[:steps]
        diff = (prop["logits"][:steps] - ref_logits).abs().max().item()
        worst = max(worst, diff)
        assert diff <= TOL * max(1.0, ref_logits.abs().max().item()), (names[i], p, diff)
        for step in range(steps):
            top2 = ref_logits[step].topk(2).values
            if (top2[0] - top2[1]).item() > 10 * TOL:  # not a near tie
                assert prop["tokens"][step] == tokens[step], (names[i], p, step)
        checked[names[i]] += 1
        videos = image_spans(seq, video_token_id(target))
        after_video[names[i]] += any(s.end <= p for s in videos)
    assert all(n >= 5 for n in checked.values()), checked
    assert after_video["one_video"] >= 5 and after_video["video_after_text"] >= 5, after_video
    print(f"videos: checked {checked}, after a video {after_video}, worst logit diff "
          f"{worst:.2e}")
