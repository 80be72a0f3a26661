"""With a quantized (fp8) target KV cache, the draft layer's own cache stays in the model
dtype through vLLM's per-layer cache dtype; a quantized draft cache asked for is refused."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from vllm.config import CacheConfig, ModelConfig, VllmConfig, set_current_vllm_config

from vllm_vispec.model.draft_kv_cache import DraftKVCacheAttention, draft_cache_config
from vllm_vispec.tiny import tiny_target


def config(cache_dtype: str, draft_kv_cache_dtype: str | None = None):
    return SimpleNamespace(cache_config=CacheConfig(cache_dtype=cache_dtype),
                           speculative_config=SimpleNamespace(
                               kv_cache_dtype=draft_kv_cache_dtype))


@pytest.mark.parametrize("cache_dtype", ["fp8", "fp8_e4m3", "fp8_e5m2"])
def test_an_inherited_fp8_cache_becomes_the_model_dtype(cache_dtype):
    target = config(cache_dtype)
    draft = draft_cache_config(target)
    assert draft.cache_dtype == "auto"
    assert target.cache_config.cache_dtype == cache_dtype  # the target keeps its own
    assert draft.block_size == target.cache_config.block_size


def test_an_unquantized_cache_is_kept_as_is():
    target = config("auto")
    assert draft_cache_config(target) is target.cache_config


def test_an_explicit_fp8_draft_cache_is_refused():
    with pytest.raises(ValueError, match=r'"kv_cache_dtype": "fp8"'):
        draft_cache_config(config("fp8", draft_kv_cache_dtype="fp8"))


def test_the_draft_layer_asks_vllm_for_a_model_dtype_cache():
    """The spec vLLM allocates from (the layer's get_kv_cache_spec): model dtype, no
    quantization, although the engine's cache dtype is fp8."""
    vllm_config = VllmConfig(model_config=ModelConfig(model=str(tiny_target("llava")),
                                                      dtype="bfloat16"),
                             cache_config=CacheConfig(cache_dtype="fp8"))
    with set_current_vllm_config(vllm_config):
        layer = DraftKVCacheAttention(4, 64, 0.125, num_kv_heads=4, vllm_config=vllm_config,
                                      prefix="model.layers.0.self_attn.attn")
    assert layer.kv_cache_dtype == "auto"
    spec = layer.get_kv_cache_spec(vllm_config)
    assert spec.dtype == torch.bfloat16
    assert not spec.kv_quant_mode  # KVQuantMode.NONE
    # Binding checks the layout: this cache is the CPU backend's head-major view.
    layer.bind_kv_cache(torch.zeros(3, 4, 32, 128, dtype=spec.dtype))
    assert layer.kv_split == "block_halves"
    with pytest.raises(ValueError, match=r"CPU_ATTN.*\(3, 4, 32, 128\).*quantized"):
        layer.bind_kv_cache(torch.zeros(3, 4, 32, 128, dtype=torch.uint8))
