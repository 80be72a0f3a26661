"""The published checkpoint layout and its strict check."""

from __future__ import annotations

import pytest

from vllm_vispec.model.layout import DraftDims, check_shapes, dims_from_config, expected_shapes

LLAVA_7B_CONFIG = {  # the published draft config of JLKang/ViSpec-llava-v1.6-vicuna-7b-hf
    "architectures": ["LlavaNextForConditionalGeneration"], "model_type": "llava_next",
    "hidden_size": 4096, "num_attention_heads": 32, "num_key_value_heads": 32,
    "intermediate_size": 11008, "vocab_size": 32064, "num_hidden_layers": 1,
    "rms_norm_eps": 1e-5, "max_position_embeddings": 4096, "rope_scaling": None,
}
QWEN_7B_CONFIG = {
    "architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
    "hidden_size": 3584, "num_attention_heads": 28, "num_key_value_heads": 28,
    "intermediate_size": 18944, "vocab_size": 152064, "rope_theta": 1000000.0,
    "qkv_bias": True, "rms_norm_eps": 1e-6, "max_position_embeddings": 8192,
}


def test_llava_7b_layout_matches_the_published_keys():
    dims = dims_from_config(LLAVA_7B_CONFIG, num_q=2)
    shapes = expected_shapes(dims)
    assert dims.fc_bias and not dims.qkv_bias and dims.rope_theta == 10000.0
    assert shapes["fc.weight"] == (4096, 8192)
    assert shapes["img_fc.bias"] == (4096,)
    assert shapes["imadpt.q"] == (2, 32, 128)
    assert shapes["embed_tokens.weight"] == (32064, 4096)
    assert "layers.0.input_layernorm.weight" not in shapes  # EAGLE-1: no input norm
    assert not any(k.endswith("norm.weight") and not k.startswith("layers.0.post")
                   for k in shapes)  # and no final norm
    assert "layers.0.self_attn.q_proj.bias" not in shapes
    # 17 tensors: the draft's whole state dict.
    assert len(shapes) == 17


def test_qwen_7b_layout_has_qkv_biases():
    dims = dims_from_config(QWEN_7B_CONFIG, num_q=2)
    shapes = expected_shapes(dims)
    assert dims.rope_theta == 1e6
    for key in ("layers.0.self_attn.q_proj.bias", "layers.0.self_attn.k_proj.bias",
                "layers.0.self_attn.v_proj.bias", "imadpt.k_proj.bias", "imadpt.v_proj.bias"):
        assert shapes[key] == (3584,)
    assert "layers.0.self_attn.o_proj.bias" not in shapes
    assert "imadpt.o_proj.bias" not in shapes


def test_bias_key_turns_fc_biases_off():
    dims = dims_from_config({**LLAVA_7B_CONFIG, "bias": False}, num_q=5)
    shapes = expected_shapes(dims)
    assert "fc.bias" not in shapes and "img_fc.bias" not in shapes
    assert shapes["imadpt.q"] == (5, 32, 128)


def test_config_without_required_keys_is_rejected():
    with pytest.raises(ValueError, match="lacks required keys.*hidden_size"):
        dims_from_config({"num_attention_heads": 4}, num_q=2)


def small_dims(**kw) -> DraftDims:
    base = dict(hidden_size=8, num_heads=2, num_kv_heads=2, head_dim=4, intermediate_size=16,
                vocab_size=10, num_q=2, qkv_bias=False, fc_bias=True, rms_norm_eps=1e-5,
                rope_theta=1e4, max_position_embeddings=64)
    return DraftDims(**{**base, **kw})


def test_check_shapes_accepts_the_exact_layout():
    dims = small_dims()
    check_shapes(expected_shapes(dims), dims, where="x")


def test_check_shapes_lists_every_problem_with_its_key():
    dims = small_dims()
    found = dict(expected_shapes(dims))
    found["fc.weight"] = (8, 8)
    del found["imadpt.o_proj.weight"]
    found["layers.0.input_layernorm.weight"] = (8,)
    with pytest.raises(ValueError) as err:
        check_shapes(found, dims, where="ckpt.safetensors")
    msg = str(err.value)
    assert "ckpt.safetensors" in msg
    assert "missing keys: ['imadpt.o_proj.weight']" in msg
    assert "unexpected keys: ['layers.0.input_layernorm.weight']" in msg
    assert "fc.weight: checkpoint (8, 8), expected (8, 16)" in msg
