"""Patch: a vispec engine refuses a prompt that holds both images and videos, where the
draft compresses videos (Qwen2.5-VL; Qwen3-VL keeps them on the text path: image_state).

The draft compresses each video like an image (one span, one summary: image_state). The
authors' code does so for prompts of videos or of images only; given both, its Qwen2.5-VL
path marks only the video tokens as image tokens (the video mask replaces the image
mask), so the images were drafted as text. No ViSpec draft was trained or evaluated on
such prompts and there is no upstream behaviour to follow, so they are refused up front
with a 400 (vLLM's validation error) instead of being drafted one way or the other.
"""

from __future__ import annotations

from .engine_scope import uses_vispec_draft
from .registry import Patch

MIXED_MEDIA_MESSAGE = (
    "vispec drafts prompts with images or with videos, not both: ViSpec's drafts compress "
    "a video like an image, and neither the published drafts nor the authors' code cover "
    "a prompt that mixes them. Send the images and the videos in separate requests, or "
    "serve this prompt from an engine without vispec speculation.")


def mixed_media(prompt_input) -> bool:
    """Whether a processed prompt has at least one image and at least one video."""
    if prompt_input is None or prompt_input.get("type") != "multimodal":
        return False
    placeholders = prompt_input.get("mm_placeholders") or {}
    return bool(placeholders.get("image")) and bool(placeholders.get("video"))


def compresses_videos(vllm_config) -> bool:
    """Qwen3-VL's drafts keep videos on the text path: mixing is as they were trained."""
    from ..image_state import compressed_modalities
    return "video" in compressed_modalities(vllm_config.model_config.hf_config.model_type)


def _make_wrapper(original):
    def _validate_model_inputs(self, encoder_input, decoder_input):
        original(self, encoder_input, decoder_input)
        if uses_vispec_draft(self.vllm_config) and mixed_media(decoder_input) \
                and compresses_videos(self.vllm_config):
            from vllm.exceptions import VLLMValidationError
            raise VLLMValidationError(MIXED_MEDIA_MESSAGE)
    return _validate_model_inputs


PATCH = Patch(
    name="vispec_mixed_media",
    target="vllm.v1.engine.input_processor:InputProcessor._validate_model_inputs",
    what="In a vispec engine, refuse a prompt with both images and videos (where videos "
         "are compressed: not Qwen3-VL) with vLLM's "
         "VLLMValidationError (HTTP 400 when served; raised by LLM.chat/generate).",
    why="ViSpec compresses a video like an image; the authors' code drafts mixed prompts "
        "with their images as text (its video mask replaces the image mask), and no draft "
        "was trained on them: refused rather than drafted in a way nobody validated.",
    remove_when="ViSpec drafts are trained and evaluated on prompts mixing images and "
                "videos, and the draft's handling of them is settled.",
    make_wrapper=_make_wrapper,
    upstream="none (a ViSpec scope limit, not a vLLM problem)",
)
