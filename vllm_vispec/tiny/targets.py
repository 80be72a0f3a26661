"""Tiny random LLaVA and Qwen2.5-VL targets, built locally in seconds with a fixed seed.

Both use head_dim 64 (the smallest the CPU attention backend serves in bf16 and fp32).
Their weights are shaped so that greedy text is regular enough for speculation to be
exercised: the text layers' output projections are scaled down and the lm_head is built so
that each ordinary token prefers a fixed successor (a random permutation). Special tokens
(eos, image placeholders) get zero lm_head rows so greedy output never contains them.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .tokenizer import train_tokenizer, wrap

TEXT_HIDDEN = 256
TEXT_HEADS = 4
TEXT_KV_HEADS = 2
TEXT_LAYERS = 2
TEXT_INTERMEDIATE = 512
VOCAB_SIZE = 448
RESIDUAL_SCALE = 0.3

LLAVA_SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n"
    "{% elif message['role'] == 'user' %}USER: "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] in ['image', 'image_url'] %}<image>\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}\n"
    "{% else %}ASSISTANT: "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{% if part['type'] == 'text' %}"
    "{{ part['text'] }}{% endif %}{% endfor %}{% endif %}</s>\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                 "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] in ['image', 'image_url'] %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _shape_text_weights(state: dict[str, torch.Tensor], special_ids: list[int],
                        printable, seed: int) -> None:
    """Scales the residual branches down and builds the successor-permutation lm_head."""
    for key, value in state.items():
        if "visual" not in key and "vision" not in key and key.endswith(
                ("o_proj.weight", "down_proj.weight")):
            value.mul_(RESIDUAL_SCALE)
    (embed_key,) = [k for k in state if k.endswith("embed_tokens.weight")]
    (lm_head_key,) = [k for k in state if k.endswith("lm_head.weight")]
    embed = state[embed_key]
    gen = torch.Generator().manual_seed(seed + 1)
    ordinary = torch.tensor([i for i in range(embed.shape[0]) if i not in set(special_ids)
                             and printable(i)])
    successor = ordinary[torch.randperm(len(ordinary), generator=gen)]
    lm_head = torch.zeros_like(state[lm_head_key])
    lm_head[successor] = embed[ordinary] / embed[ordinary].norm(dim=-1, keepdim=True) * 4.0
    state[lm_head_key] = lm_head


def _printable(tok):
    """Tokens that decode to visible words, so greedy text reads as text."""
    def check(i: int) -> bool:
        text = tok.decode([i])
        return len(text.strip()) > 1 and text.strip().isalpha()
    return check


def _save_tokenizer_and_processor(processor, out: Path) -> None:
    processor.save_pretrained(out)


def build_tiny_llava(out: Path, seed: int = 0) -> None:
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    out.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(LLAVA_SPECIALS, VOCAB_SIZE, seed)
    ids = {t: tok.token_to_id(t) for t in LLAVA_SPECIALS}
    tokenizer = wrap(tok, LLAVA_CHAT_TEMPLATE, unk_token="<unk>", bos_token="<s>",
                     eos_token="</s>", pad_token="<pad>")
    text = LlamaConfig(
        vocab_size=VOCAB_SIZE, hidden_size=TEXT_HIDDEN, intermediate_size=TEXT_INTERMEDIATE,
        num_hidden_layers=TEXT_LAYERS, num_attention_heads=TEXT_HEADS,
        num_key_value_heads=TEXT_KV_HEADS, max_position_embeddings=2048,
        bos_token_id=ids["<s>"], eos_token_id=ids["</s>"], pad_token_id=ids["<pad>"],
        tie_word_embeddings=False,
    )
    vision = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=2, image_size=56, patch_size=14,
                              projection_dim=64)
    config = LlavaConfig(text_config=text, vision_config=vision,
                         image_token_index=ids["<image>"], vision_feature_layer=-2,
                         vision_feature_select_strategy="default",
                         projector_hidden_act="gelu", image_seq_length=16)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    model.save_pretrained(out, safe_serialization=True)

    # transformers saves the CLIP tower as `vision_tower.<...>`; vLLM's loader wants
    # `vision_tower.vision_model.<...>` (the layout of the published llava-hf checkpoints).
    weights = out / "model.safetensors"
    state = load_file(weights)
    state = {_llava_key(k): v.clone() for k, v in state.items()}
    _shape_text_weights(state, list(ids.values()), _printable(tok), seed)
    save_file(state, weights, metadata={"format": "pt"})

    image_processor = CLIPImageProcessor(size={"shortest_edge": 56},
                                         crop_size={"height": 56, "width": 56})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer,
                               patch_size=14, vision_feature_select_strategy="default",
                               num_additional_image_tokens=1,
                               chat_template=LLAVA_CHAT_TEMPLATE)
    _save_tokenizer_and_processor(processor, out)
    tokenizer.save_pretrained(out)


def _llava_key(key: str) -> str:
    marker = "vision_tower."
    if marker in key and ".vision_model." not in key:
        head, tail = key.split(marker, 1)
        return f"{head}{marker}vision_model.{tail}"
    return key


def build_tiny_qwen25vl(out: Path, seed: int = 0) -> None:
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration,
                              Qwen2_5_VLProcessor, Qwen2VLImageProcessor)
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    out.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(QWEN_SPECIALS, VOCAB_SIZE, seed)
    ids = {t: tok.token_to_id(t) for t in QWEN_SPECIALS}
    tokenizer = wrap(tok, QWEN_CHAT_TEMPLATE, eos_token="<|im_end|>",
                     pad_token="<|endoftext|>")
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=VOCAB_SIZE, hidden_size=TEXT_HIDDEN,
            intermediate_size=TEXT_INTERMEDIATE, num_hidden_layers=TEXT_LAYERS,
            num_attention_heads=TEXT_HEADS, num_key_value_heads=TEXT_KV_HEADS,
            max_position_embeddings=2048, bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                             "mrope_section": [8, 12, 12]},
            tie_word_embeddings=False,
        ),
        vision_config=dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                           window_size=112, out_hidden_size=TEXT_HIDDEN,
                           fullatt_block_indexes=[1]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.save_pretrained(out, safe_serialization=True)
    weights = out / "model.safetensors"
    state = {k: v.clone() for k, v in load_file(weights).items()}
    _shape_text_weights(state, list(ids.values()), _printable(tok), seed)
    save_file(state, weights, metadata={"format": "pt"})

    pixels = {"min_pixels": 28 * 28 * 4, "max_pixels": 28 * 28 * 16}
    image_processor = Qwen2VLImageProcessor(
        size={"shortest_edge": pixels["min_pixels"], "longest_edge": pixels["max_pixels"]},
        patch_size=14, merge_size=2, temporal_patch_size=2)
    video_processor = Qwen2VLVideoProcessor(
        size={"shortest_edge": pixels["min_pixels"], "longest_edge": pixels["max_pixels"]},
        patch_size=14, merge_size=2, temporal_patch_size=2)
    processor = Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                    video_processor=video_processor,
                                    chat_template=QWEN_CHAT_TEMPLATE)
    _save_tokenizer_and_processor(processor, out)
    tokenizer.save_pretrained(out)


def read_target_text_config(target: Path) -> dict:
    cfg = json.loads((target / "config.json").read_text())
    return cfg.get("text_config", cfg)
