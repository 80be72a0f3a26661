"""The image-token series' warm start: a demo-style LLaVA retargeted to larger pictures keeps
every weight but the tower's position grid, which is resized; its processor and the
drafts' prompts make pictures of the new size and as many image tokens as the config says."""

from __future__ import annotations

import pytest
import torch

from vllm_vispec.tiny import IMAGE_TOKEN_SERIES, image_token_target
from vllm_vispec.tiny.demo_target import PATCH_SIZE, make_processor, picture_size
from vllm_vispec.tiny.prompts import demo_prompts_168, demo_prompts_336
from vllm_vispec.tiny.scaled_target import (PICTURE_SIZES, picture_size_for,
                                            resize_positions, scaled_config, scaled_model)
from vllm_vispec.tiny.targets import LLAVA_CHAT_TEMPLATE, LLAVA_SPECIALS
from vllm_vispec.tiny.tokenizer import train_tokenizer, wrap


def _tiny_llava(image_size: int = 84):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, \
        LlavaForConditionalGeneration
    text = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64,
                       num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)
    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                              num_attention_heads=2, image_size=image_size,
                              patch_size=PATCH_SIZE, projection_dim=16)
    config = LlavaConfig(text_config=text, vision_config=vision, image_token_index=5,
                         image_seq_length=(image_size // PATCH_SIZE) ** 2)
    torch.manual_seed(0)
    return LlavaForConditionalGeneration(config).eval()


def test_position_grid_resizes_and_keeps_the_class_position():
    weight = torch.randn(1 + 36, 8)
    bigger = resize_positions(weight, 12)
    assert bigger.shape == (1 + 144, 8)
    assert torch.equal(bigger[0], weight[0])
    assert torch.allclose(resize_positions(weight, 6), weight, atol=1e-5)  # same grid
    # A ramp across the grid's columns stays a ramp: left edge low, right edge high.
    ramp = torch.cat([torch.zeros(1, 1),
                      torch.arange(6.0).repeat(6).reshape(36, 1)])
    cols = resize_positions(ramp, 12)[1:].reshape(12, 12)
    assert (cols[:, 1:] >= cols[:, :-1] - 1e-5).all() and cols[0, -1] > cols[0, 0] + 4
    with pytest.raises(ValueError, match="not a square grid"):
        resize_positions(torch.randn(1 + 35, 8), 12)


def test_scaled_model_keeps_every_weight_and_sees_more_image_tokens():
    base = _tiny_llava()
    model = scaled_model(base, 168).eval()
    assert model.config.image_seq_length == 144
    assert model.config.vision_config.image_size == 168
    old, new = base.state_dict(), model.state_dict()
    moved = [k for k in new if not torch.equal(new[k], old[k])]
    assert all("position_" in k for k in moved) and any("position_embedding" in k
                                                        for k in moved)
    # A 168-pixel picture fills exactly 144 image tokens of the prompt.
    pixels = torch.randn(1, 3, 168, 168)
    ids = torch.tensor([[1, *[5] * 144, 7]])
    with torch.no_grad():
        assert model(input_ids=ids, pixel_values=pixels).logits.shape == (1, 146, 96)
        with pytest.raises(ValueError):
            model(input_ids=torch.tensor([[1, *[5] * 36, 7]]), pixel_values=pixels)
    with pytest.raises(ValueError, match="14-pixel patches"):
        scaled_config(base.config, 170)


def test_processor_and_prompts_make_pictures_of_the_scaled_size():
    tok = train_tokenizer(LLAVA_SPECIALS, 128, corpus=["a red circle", "a blue square"])
    tokenizer = wrap(tok, LLAVA_CHAT_TEMPLATE, unk_token="<unk>", bos_token="<s>",
                     eos_token="</s>", pad_token="<pad>")
    processor = make_processor(tokenizer, 336)
    assert picture_size(processor) == 336
    (messages, images), = demo_prompts_336(1, seed=3)
    assert images[0].size == (336, 336)
    assert demo_prompts_168(1, seed=3)[0][1][0].size == (168, 168)
    inputs = processor(text="USER: <image>\nDescribe the image.\nASSISTANT:",
                       images=images[0], return_tensors="pt")
    assert inputs["pixel_values"].shape[-2:] == (336, 336)
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    assert (inputs["input_ids"] == image_id).sum().item() == 576


def test_series_sizes_and_refusals():
    assert sorted(IMAGE_TOKEN_SERIES) == sorted(PICTURE_SIZES) == [36, 144, 576]
    assert {t: (picture_size_for(t) // PATCH_SIZE) ** 2 for t in PICTURE_SIZES} == {
        36: 36, 144: 144, 576: 576}
    with pytest.raises(ValueError, match="choose from"):
        image_token_target(100)
