"""A tiny random Qwen3-VL target (dense), built locally in seconds with a fixed seed.

Shaped like the Qwen2.5-VL one (targets.py) where the families agree, and like Qwen3-VL
where they differ, so that the draft meets what a real Qwen3-VL target gives it:

* Qwen3 text layers (QK-norm, no q/k/v bias) with an explicit ``head_dim`` whose heads do
  not multiply out to the hidden size (8 x 64 = 512 over 256, as Qwen3-VL-4B's
  32 x 128 = 4096 over 2560), GQA, and interleaved M-RoPE;
* a vision tower of 16-pixel patches with a DeepStack level, so vLLM's encoder output per
  image token is ``hidden * 2`` wide (the main feature, then the DeepStack feature).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .targets import (QWEN_CHAT_TEMPLATE, QWEN_SPECIALS, TEXT_HIDDEN, TEXT_INTERMEDIATE,
                      TEXT_KV_HEADS, TEXT_LAYERS, VOCAB_SIZE, _printable,
                      _save_tokenizer_and_processor, _shape_text_weights)
from .tokenizer import train_tokenizer, wrap

QWEN3_HEADS = 8
QWEN3_HEAD_DIM = 64  # the smallest the CPU attention backend serves
PATCH = 16
# 4 to 16 image tokens per picture, as for the tiny Qwen2.5-VL (its patches are 14 pixels).
PIXELS = {"min_pixels": (2 * PATCH) ** 2 * 4, "max_pixels": (2 * PATCH) ** 2 * 16}


def build_tiny_qwen3vl(out: Path, seed: int = 0) -> None:
    from transformers import (Qwen2VLImageProcessor, Qwen3VLConfig,
                              Qwen3VLForConditionalGeneration, Qwen3VLProcessor)
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    out.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(QWEN_SPECIALS, VOCAB_SIZE, seed)
    ids = {t: tok.token_to_id(t) for t in QWEN_SPECIALS}
    tokenizer = wrap(tok, QWEN_CHAT_TEMPLATE, eos_token="<|im_end|>",
                     pad_token="<|endoftext|>")
    config = Qwen3VLConfig(
        text_config=dict(
            vocab_size=VOCAB_SIZE, hidden_size=TEXT_HIDDEN,
            intermediate_size=TEXT_INTERMEDIATE, num_hidden_layers=TEXT_LAYERS,
            num_attention_heads=QWEN3_HEADS, num_key_value_heads=TEXT_KV_HEADS,
            head_dim=QWEN3_HEAD_DIM, max_position_embeddings=2048,
            bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
            # sections sum to head_dim / 2, as Qwen3-VL's [24, 20, 20] do for 128
            rope_parameters={"rope_type": "default", "rope_theta": 5000000.0,
                             "mrope_section": [12, 10, 10], "mrope_interleaved": True},
        ),
        vision_config=dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2,
                           patch_size=PATCH, spatial_merge_size=2, temporal_patch_size=2,
                           out_hidden_size=TEXT_HIDDEN, num_position_embeddings=64,
                           deepstack_visual_indexes=[0]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(config).eval()
    model.save_pretrained(out, safe_serialization=True)
    weights = out / "model.safetensors"
    state = {k: v.clone() for k, v in load_file(weights).items()}
    _shape_text_weights(state, list(ids.values()), _printable(tok), seed)
    save_file(state, weights, metadata={"format": "pt"})

    size = {"shortest_edge": PIXELS["min_pixels"], "longest_edge": PIXELS["max_pixels"]}
    image_processor = Qwen2VLImageProcessor(size=size, patch_size=PATCH, merge_size=2,
                                            temporal_patch_size=2)
    video_processor = Qwen3VLVideoProcessor(size=size, patch_size=PATCH, merge_size=2,
                                            temporal_patch_size=2)
    processor = Qwen3VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                 video_processor=video_processor,
                                 chat_template=QWEN_CHAT_TEMPLATE)
    _save_tokenizer_and_processor(processor, out)
    tokenizer.save_pretrained(out)
