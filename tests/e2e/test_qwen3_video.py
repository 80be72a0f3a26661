"""Videos on the tiny Qwen3-VL target: they stay on the draft's text path (each video token
takes its own main visual feature; no compressed span, no summary: image_state), so a
prompt mixing images and videos is served, not refused as on Qwen2.5-VL (media_mix).

- greedy output equals plugin-free vLLM's for the video prompts and for a prompt with an
  image and a video, batched and alone, and the draft drafted (some tokens rejected);
- every video token reached the draft as a visual feature, not as its placeholder's text
  embedding, and only the images got summaries (one per distinct image, none for videos);
- the mixed prompt sent by itself, last, returns text on the same engine: no refusal.
"""

from __future__ import annotations

import pytest
import torch
from plain_vllm import plain_greedy
from prompts import image_and_video_conversation, video_conversations
from video_target import video_chat_target, video_token_id
from vllm_runs import greedy_params, offline_llm, spec_counters, vispec_config

from vllm_vispec.model.draft import EagleVispecForCausalLM
from vllm_vispec.train.target_features import image_spans

KIND = "qwen3_vl"
# one_image's picture and the mixed prompt's (prompts.py); the videos' frames are others.
DISTINCT_IMAGES = 2


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    return video_chat_target(tmp_path_factory.mktemp("video-target") / KIND, kind=KIND)


def conversations() -> dict[str, list[dict]]:
    return {**video_conversations(), "image_and_video": image_and_video_conversation()}


def chat(llm, convs):
    outs = llm.chat(list(convs.values()), greedy_params(), use_tqdm=False)
    return dict(zip(convs, outs))


class VideoRows:
    """The draft's input embeddings of video tokens: how many took a visual feature and
    how many their placeholder's text embedding."""

    def __init__(self, monkeypatch, video_id: int):
        self.visual = self.as_text = 0
        embed = EagleVispecForCausalLM.embed_input_ids
        rows = self

        def recording(model, input_ids, multimodal_embeddings=None, *, is_multimodal=None):
            out = embed(model, input_ids, multimodal_embeddings, is_multimodal=is_multimodal)
            video = input_ids == video_id
            if video.any():
                text = model.model.embed_tokens(input_ids[video])
                same = torch.isclose(out[video], text).all(dim=-1)
                rows.as_text += int(same.sum())
                rows.visual += int((~same).sum())
            return out

        monkeypatch.setattr(EagleVispecForCausalLM, "embed_input_ids", recording)


def test_videos_stay_on_the_text_path_and_mixed_prompts_are_served(target, monkeypatch):
    convs = conversations()
    expected = plain_greedy(KIND, convs, model=str(target))
    video_id = video_token_id(target)
    rows = VideoRows(monkeypatch, video_id)
    with offline_llm(KIND, vispec_config(KIND, 3), model=str(target)) as llm:
        batched = chat(llm, convs)
        single = {}
        for name, conv in convs.items():
            single.update(chat(llm, {name: conv}))
        counters = spec_counters(llm)
        drafter = llm.llm_engine.model_executor.driver_worker.worker.model_runner.drafter
        summarized = list(drafter.image_store.by_content)
        # The mixed prompt by itself, last, on an engine that has served everything else:
        # Qwen2.5-VL's engine raises VLLMValidationError here (test_video.py).
        (mixed,) = llm.chat([convs["image_and_video"]], greedy_params(), use_tqdm=False)

    for name in convs:
        assert list(batched[name].outputs[0].token_ids) == expected[name][0], \
            f"{name} (batched) differs"
        assert list(single[name].outputs[0].token_ids) == expected[name][0], \
            f"{name} (alone) differs"
    assert list(mixed.outputs[0].token_ids) == expected["image_and_video"][0]
    assert mixed.outputs[0].text == expected["image_and_video"][1] and mixed.outputs[0].text
    assert 0 < counters["num_accepted_tokens"] < counters["num_draft_tokens"], counters

    spans = {name: image_spans(out.prompt_token_ids, video_id)
             for name, out in batched.items()}
    # The layout that keeps videos off the compressed path: a Qwen3-VL video of more than
    # two frames is runs of video tokens with each frame pair's timestamp text between.
    assert len(spans["one_video"]) == 2 and len(spans["video_after_text"]) == 3, spans
    assert not spans["one_image"] and len(spans["image_and_video"]) == 1, spans
    video_tokens = sum(s.end - s.start for ss in spans.values() for s in ss)
    # Every video token of the first (uncached) batch went through the draft's embedding
    # layer with its own visual feature; none fell back to the placeholder's embedding.
    assert rows.as_text == 0 and rows.visual >= video_tokens, (rows.visual, rows.as_text,
                                                               video_tokens)
    # Summaries by content: the two pictures' only; a compressed video would add one each.
    assert len(summarized) == DISTINCT_IMAGES, summarized
