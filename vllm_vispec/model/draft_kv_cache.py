"""The vLLM attention layer that owns the draft layer's paged KV cache.

The draft reads and writes this cache itself (compressed_attention.py), so two things
vLLM would otherwise leave implicit are settled here, at start-up:

- Its dtype. The draft inherits the target's ``--kv-cache-dtype`` (vLLM's speculative
  config), and quantized caches (fp8: bytes plus per-layer scales) are not something the
  draft's attention reads. Its cache stays in the model dtype instead, through vLLM's own
  per-layer mechanism: an ``Attention`` built with a cache config whose dtype is
  ``"auto"``, exactly what vLLM does for a speculative ``kv_cache_dtype`` of ``"auto"``.
  vLLM gives such a layer its own KV cache group (its page is wider than the target's)
  and hands the drafter that group's block table and slot mapping.
- Its layout. When the runner binds the cache, the view is checked against the split
  the layer's backend uses (kv_layout.py); an unknown backend or shape is refused then,
  not at the first request.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from vllm.config import CacheConfig, VllmConfig
from vllm.logger import init_logger
from vllm.model_executor.layers.attention import Attention
from vllm.v1.kv_cache_interface import is_quantized_kv_cache

from .kv_layout import check_draft_kv_cache

logger = init_logger(__name__)


def draft_cache_config(vllm_config: VllmConfig) -> CacheConfig:
    """The cache config of the draft's attention layer: the model dtype whatever the
    target's KV cache dtype; a quantized draft cache asked for explicitly is refused."""
    cache_config = vllm_config.cache_config
    if not is_quantized_kv_cache(cache_config.cache_dtype):
        return cache_config
    spec = vllm_config.speculative_config
    asked = getattr(spec, "kv_cache_dtype", None)
    if asked is not None and is_quantized_kv_cache(asked):
        raise ValueError(
            f'vispec\'s draft keeps its KV cache in the model dtype; "kv_cache_dtype": '
            f'"{asked}" in the speculative config is not supported (drop it: the target '
            f"keeps its own --kv-cache-dtype)")
    logger.info_once("vispec: the target's KV cache is %s; the draft layer's stays in the "
                     "model dtype", cache_config.cache_dtype)
    return replace(cache_config, cache_dtype="auto")


class DraftKVCacheAttention(Attention):
    """vLLM's ``Attention``, used only for the cache it allocates and binds: the draft
    never calls its forward. ``kv_split`` is how the backend splits the bound cache."""

    def __init__(self, num_heads: int, head_size: int, scale: float, num_kv_heads: int,
                 vllm_config: VllmConfig, prefix: str) -> None:
        super().__init__(num_heads, head_size, scale, num_kv_heads=num_kv_heads,
                         cache_config=draft_cache_config(vllm_config), prefix=prefix)
        self.kv_split: str | None = None
        self.scale = scale

    def bind_kv_cache(self, kv_cache: torch.Tensor) -> None:
        self.kv_split = check_draft_kv_cache(kv_cache, self.attn_backend.get_name(),
                                             self.num_kv_heads, self.head_size)
        super().bind_kv_cache(kv_cache)
