"""Qwen-VL picture sizes: the pixel range pictures are resized into, which fixes how many
image tokens each one becomes. vLLM (the answers) and HF (the recorded features) must
resize alike, or the features would not line up with vLLM's image tokens.

LLaVA resizes to a fixed square whatever the limits, so they do not apply to it.
"""

from __future__ import annotations

from dataclasses import dataclass

QWEN_VL_TYPES = ("qwen2_vl", "qwen2_5_vl")
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
    return target_cfg.get("model_type") in QWEN_VL_TYPES


def pixel_limits_for(target_cfg: dict, min_pixels: int | None = None,
                     max_pixels: int | None = None) -> PixelLimits | None:
    """The limits for a Qwen-VL target (ViSpec's where not given); None for other
    targets."""
    if not applies_to(target_cfg):
        return None
    low = VISPEC_MIN_PIXELS if min_pixels is None else min_pixels
    high = VISPEC_MAX_PIXELS if max_pixels is None else max_pixels
    if low <= 0 or high < low:
        raise ValueError(f"pixel limits need 0 < min-pixels <= max-pixels (got {low}, {high})")
    return PixelLimits(low, high)
