"""A vispec engine refuses prompts mixing images and videos where its draft compresses
videos (patches/media_mix.py); every other prompt, a Qwen3-VL engine's mixed prompts (its
videos stay on the draft's text path), and every prompt of an engine without vispec, go to
vLLM's validation unchanged."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from test_patch_scope import Recorder, engine_config
from vllm.exceptions import VLLMValidationError

from vllm_vispec.patches import PATCHES
from vllm_vispec.patches.media_mix import MIXED_MEDIA_MESSAGE

(PATCH,) = [p for p in PATCHES if p.name == "vispec_mixed_media"]


def prompt(**items) -> dict:
    return {"type": "multimodal", "prompt_token_ids": [1, 2, 3],
            "mm_placeholders": {modality: [object()] * n for modality, n in items.items()}}


def processor(vispec: bool, target: str = "qwen2_5_vl"):
    model = SimpleNamespace(hf_config=SimpleNamespace(model_type=target))
    return SimpleNamespace(vllm_config=engine_config(vispec, model_config=model))


PROMPTS = {
    "text": {"type": "token", "prompt_token_ids": [1, 2]},
    "images": prompt(image=2),
    "video": prompt(video=1),
    "image and no video": prompt(image=1, video=0),
    "image and video": prompt(image=1, video=1),
}


@pytest.mark.parametrize("name", list(PROMPTS))
def test_without_vispec_every_prompt_passes_through(name):
    original = Recorder()
    proc = processor(vispec=False)
    PATCH.make_wrapper(original)(proc, None, PROMPTS[name])
    assert original.calls == [((proc, None, PROMPTS[name]), {})]


@pytest.mark.parametrize("name", ["text", "images", "video", "image and no video"])
def test_vispec_takes_prompts_of_one_medium(name):
    original = Recorder()
    proc = processor(vispec=True)
    PATCH.make_wrapper(original)(proc, None, PROMPTS[name])
    assert original.calls == [((proc, None, PROMPTS[name]), {})]


def test_vispec_refuses_images_with_videos_after_vllms_own_checks():
    original = Recorder()
    with pytest.raises(VLLMValidationError) as err:
        PATCH.make_wrapper(original)(processor(vispec=True), None, PROMPTS["image and video"])
    assert str(err.value) == MIXED_MEDIA_MESSAGE and "separate requests" in str(err.value)
    assert len(original.calls) == 1  # vLLM's validation ran first


def test_vllms_errors_come_first():
    def failing(*_):
        raise VLLMValidationError("prompt too long")
    with pytest.raises(VLLMValidationError, match="prompt too long"):
        PATCH.make_wrapper(failing)(processor(vispec=True), None, PROMPTS["image and video"])


@pytest.mark.parametrize("target", ["qwen3_vl", "qwen3_vl_moe"])
def test_qwen3_vl_engines_take_images_with_videos(target):
    original = Recorder()
    proc = processor(vispec=True, target=target)
    PATCH.make_wrapper(original)(proc, None, PROMPTS["image and video"])
    assert original.calls == [((proc, None, PROMPTS["image and video"]), {})]
