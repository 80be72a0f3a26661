"""Qwen-VL picture sizes: the pixel range pictures are resized into, which fixes how many
image tokens each one becomes. vLLM (the answers) and HF (the recorded features) must
resize alike, or the features would not line up with vLLM's image tokens.

Qwen2-VL and Qwen2.5-VL default to ViSpec's range, the one its published drafts were
trained on. Qwen3-VL (and Qwen3-VL-MoE) keep their processor's own range unless limits are
given: ViSpec's range is 256 to 1280 tokens of 28 pixels, chosen for Qwen2.5-VL, while a
Qwen3-VL token is 32 pixels (16-pixel patches, merged 2 x 2), and no ViSpec draft exists
for Qwen3-VL whose range there would be to match. A draft is best trained on the sizes it
will be served at, and a Qwen3-VL deployment resizes with its processor's defaults (64 to
16384 tokens on the published checkpoints) unless told otherwise. vLLM and HF both read
those defaults from the target's processor config, so they agree without being told.

LLaVA resizes to a fixed square whatever the limits, so they do not apply to it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

QWEN_VL_TYPES = ("qwen2_vl", "qwen2_5_vl")  # ViSpec's range unless given
QWEN3_VL_TYPES = ("qwen3_vl", "qwen3_vl_moe")  # the processor's range unless given
# ViSpec's data generation for Qwen2.5-VL: 256 to 1280 image tokens of 28x28 pixels.
VISPEC_MIN_PIXELS = 256 * 28 * 28
VISPEC_MAX_PIXELS = 1280 * 28 * 28


@dataclass(frozen=True)
class PixelLimits:
    min_pixels: int
    max_pixels: int

    def vllm_kwargs(self) -> dict:
        """vLLM's ``mm_processor_kwargs``."""
        return {"min_pixels": self.min_pixels, "max_pixels": self.max_pixels}

    def hf_kwargs(self) -> dict:
        """The HF image processor's call arguments, the same sizes."""
        return {"size": {"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels}}


def applies_to(target_cfg: dict) -> bool:
    return target_cfg.get("model_type") in QWEN_VL_TYPES + QWEN3_VL_TYPES


def processor_pixel_range(target: str | Path) -> dict[str, int]:
    """The target's own image processor range (``shortest_edge``/``longest_edge`` in
    pixels), what vLLM and HF resize into when not told otherwise."""
    from transformers import AutoImageProcessor
    size = AutoImageProcessor.from_pretrained(str(target)).size
    size = size if isinstance(size, Mapping) else vars(size)
    return {"shortest_edge": int(size["shortest_edge"]),
            "longest_edge": int(size["longest_edge"])}


def pixel_limits_for(target_cfg: dict, min_pixels: int | None = None,
                     max_pixels: int | None = None, *,
                     processor_range: Mapping[str, int] | None = None) -> PixelLimits | None:
    """The limits for a Qwen-VL target; None for other targets.

    Qwen2(.5)-VL: ViSpec's where not given. Qwen3-VL: None (the processor's own range)
    unless one is given; a limit not given is then the processor's (``processor_range``,
    from :func:`processor_pixel_range`), since HF's processor needs both edges."""
    if not applies_to(target_cfg):
        return None
    if target_cfg.get("model_type") in QWEN3_VL_TYPES:
        if min_pixels is None and max_pixels is None:
            return None
        if processor_range is None:
            raise ValueError("a Qwen3-VL target's limits need its processor's range "
                             "for the limit not given")
        low = processor_range["shortest_edge"] if min_pixels is None else min_pixels
        high = processor_range["longest_edge"] if max_pixels is None else max_pixels
    else:
        low = VISPEC_MIN_PIXELS if min_pixels is None else min_pixels
        high = VISPEC_MAX_PIXELS if max_pixels is None else max_pixels
    if low <= 0 or high < low:
        raise ValueError(f"pixel limits need 0 < min-pixels <= max-pixels (got {low}, {high})")
    return PixelLimits(low, high)
