"""A tiny random Qwen3-VL-MoE target, built locally in seconds with a fixed seed.

The dense Qwen3-VL fixture (qwen3_target.py) with its MLPs replaced by sparse MoE blocks
(4 experts, top-2, as Qwen3-VL-30B-A3B's 128 experts, top-8, in small): same tokenizer,
attention shape, M-RoPE and vision tower with a DeepStack level. The text config keeps a
dense ``intermediate_size`` that no layer uses (as Qwen3-VL-30B-A3B's 6144 beside its
``moe_intermediate_size`` 768): a ViSpec draft's MLP takes it (NeMo Automodel builds its
draft from a copy of the target's text config).

The fused expert tensors keep transformers' names (``mlp.experts.gate_up_proj``,
``mlp.experts.down_proj``, which vLLM's loader matches) but are transposed to the published
checkpoints' layout: transformers 5 saves its in-memory layout (``gate_up_proj``
``[experts, 2 * moe_intermediate, hidden]``, ``down_proj`` ``[experts, hidden,
moe_intermediate]``) and transposes on load (its ``qwen3_vl_moe`` conversion mapping),
while vLLM's Qwen3-VL-MoE layers read the published layout
(``is_fused_checkpoint_transposed=True``: ``[experts, hidden, 2 * moe_intermediate]`` and
``[experts, moe_intermediate, hidden]``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .qwen3_target import PATCH, PIXELS, QWEN3_HEAD_DIM, QWEN3_HEADS
from .targets import (QWEN_CHAT_TEMPLATE, QWEN_SPECIALS, RESIDUAL_SCALE, TEXT_HIDDEN,
                      TEXT_INTERMEDIATE, TEXT_KV_HEADS, TEXT_LAYERS, VOCAB_SIZE, _printable,
                      _save_tokenizer_and_processor, _shape_text_weights)
from .tokenizer import train_tokenizer, wrap

NUM_EXPERTS = 4
EXPERTS_PER_TOKEN = 2
MOE_INTERMEDIATE = 192  # unlike hidden (256) and 2 x itself, so a transposed tensor shows
FUSED_EXPERTS = ("mlp.experts.gate_up_proj", "mlp.experts.down_proj")


def build_tiny_qwen3vl_moe(out: Path, seed: int = 0) -> None:
    from transformers import (Qwen2VLImageProcessor, Qwen3VLMoeConfig,
                              Qwen3VLMoeForConditionalGeneration, Qwen3VLProcessor)
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    out.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(QWEN_SPECIALS, VOCAB_SIZE, seed)
    ids = {t: tok.token_to_id(t) for t in QWEN_SPECIALS}
    tokenizer = wrap(tok, QWEN_CHAT_TEMPLATE, eos_token="<|im_end|>",
                     pad_token="<|endoftext|>")
    config = Qwen3VLMoeConfig(
        text_config=dict(
            vocab_size=VOCAB_SIZE, hidden_size=TEXT_HIDDEN,
            intermediate_size=TEXT_INTERMEDIATE, num_hidden_layers=TEXT_LAYERS,
            num_attention_heads=QWEN3_HEADS, num_key_value_heads=TEXT_KV_HEADS,
            head_dim=QWEN3_HEAD_DIM, max_position_embeddings=2048,
            num_experts=NUM_EXPERTS, num_experts_per_tok=EXPERTS_PER_TOKEN,
            moe_intermediate_size=MOE_INTERMEDIATE, decoder_sparse_step=1,
            mlp_only_layers=[],
            # Not a field of transformers' config (its router always renormalises), but
            # in the published configs, and vLLM's Qwen3-MoE block reads it.
            norm_topk_prob=True,
            # the text config's own default is True, and vLLM's MoE text model reads it
            tie_word_embeddings=False,
            bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
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
    model = Qwen3VLMoeForConditionalGeneration(config).eval()
    model.save_pretrained(out, safe_serialization=True)
    weights = out / "model.safetensors"
    state = {k: v.clone() for k, v in load_file(weights).items()}
    for key, value in state.items():
        if key.endswith(FUSED_EXPERTS):
            state[key] = value.transpose(1, 2).contiguous()
        # The experts' down projection is the MoE block's residual branch; its fused
        # tensor has no ".weight" suffix, so _shape_text_weights would miss it.
        if key.endswith("mlp.experts.down_proj"):
            state[key].mul_(RESIDUAL_SCALE)
    _check_expert_layout(state)
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


def _check_expert_layout(state: dict[str, torch.Tensor]) -> None:
    """The fused experts in the layout vLLM's Qwen3-VL-MoE loader reads (the published
    one); a transformers release that saved them transposed already would fail here."""
    want = {"mlp.experts.gate_up_proj": (NUM_EXPERTS, TEXT_HIDDEN, 2 * MOE_INTERMEDIATE),
            "mlp.experts.down_proj": (NUM_EXPERTS, MOE_INTERMEDIATE, TEXT_HIDDEN)}
    for suffix, shape in want.items():
        found = {k: tuple(v.shape) for k, v in state.items() if k.endswith(suffix)}
        if len(found) != TEXT_LAYERS or set(found.values()) != {shape}:
            raise RuntimeError(f"expected {TEXT_LAYERS} fused {suffix} tensors of shape "
                               f"{shape}, got {found}")
