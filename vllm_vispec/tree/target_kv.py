"""The target's KV cache, for tree verification: which backends it can be read under,
each layer's key and value caches in the layout its backend uses, and the target's KV
cache group.

Tree verification attends every tree row to its request's cached context, reading the
target's cache where the backend wrote it, and moves each accepted path's K/V into place:

- FlashAttention, FlashInfer, Triton attention (CUDA): vLLM binds each layer a 4-D view
  ``[num_blocks, kv_heads, block_size, 2 * head_dim]`` and the backend splits it
  ``kv_cache.transpose(1, 2).split(head_dim, -1)`` (kv_layout.LAST_DIM), whatever the
  physical stride order.
- vLLM's CPU backend: per (block, head) keys dimension-major (``[D, block_size]``), then
  values token-major, for the ``vec``/``vec16`` attention ISAs.
"""

from __future__ import annotations

import torch

from ..model.kv_layout import BACKEND_KV_SPLITS, LAST_DIM, key_value_views

# The backends whose attention forward the tree-attention patches wrap (see
# patches/tree_verification.py), by AttentionBackend.get_name().
TREE_BACKENDS = ("FLASH_ATTN", "FLASHINFER", "TRITON_ATTN", "CPU_ATTN")
# CPU attention ISAs whose in-block layout we read (checked at run time as well).
KNOWN_CPU_LAYOUTS = ("vec", "vec16")
# KV cache dtypes read as they are (a quantized cache needs scales tree attention lacks).
UNQUANTIZED_CACHE_DTYPES = ("auto", "float16", "half", "bfloat16", "float", "float32")


def cpu_target_kv_views(kv_cache: torch.Tensor, isa: str):
    """Key and value caches of vLLM's CPU attention as ``[blocks, block_size, heads, D]``
    views. Per (block, head) the ``vec``/``vec16`` kernels store keys dimension-major
    (``[D, block_size]``) and values token-major (``[block_size, D]``)."""
    if isa not in KNOWN_CPU_LAYOUTS:
        raise NotImplementedError(
            f"vispec tree verification reads vLLM's CPU KV cache, whose layout for the "
            f"{isa!r} attention ISA it does not know (known: {KNOWN_CPU_LAYOUTS}); drop "
            '"tree" from the speculative config to draft chains')
    num_blocks, heads, block_size, two_d = kv_cache.shape
    head_dim = two_d // 2
    kv = kv_cache.view(num_blocks, heads, 2 * block_size, head_dim)
    keys = kv[:, :, :block_size].reshape(num_blocks, heads, head_dim, block_size)
    return keys.permute(0, 3, 1, 2), kv[:, :, block_size:].permute(0, 2, 1, 3)


def target_kv_views(kv_cache: torch.Tensor, backend: str, isa: str | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """A target layer's key and value caches as ``[blocks, block_size, kv_heads, D]``
    views (any strides) under ``backend``."""
    if backend == "CPU_ATTN":
        return cpu_target_kv_views(kv_cache, isa)
    if backend in TREE_BACKENDS and BACKEND_KV_SPLITS.get(backend) == LAST_DIM:
        return key_value_views(kv_cache, LAST_DIM)
    from .support import tree_backend_refusal
    raise NotImplementedError(tree_backend_refusal(backend))


class TargetKVCaches:
    """Fixed once the runner has allocated the caches, so found once."""

    def __init__(self, draft_layer_names) -> None:
        self._draft_layers = set(draft_layer_names)
        self._group: int | None = None
        self._views: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def group(self, runner) -> int:
        """The KV cache group of the target's layers."""
        if self._group is None:
            self._group = next(
                (gid for gid, group in enumerate(runner.kv_cache_config.kv_cache_groups)
                 if any(name not in self._draft_layers for name in group.layer_names)),
                None)
            if self._group is None:
                raise RuntimeError("vispec: no KV cache group holds the target's layers")
        return self._group

    def target_layers(self, runner):
        """The target's attention layers (name, layer), in the runner's forward context."""
        context = runner.compilation_config.static_forward_context
        for name, layer in context.items():
            if name in self._draft_layers or not hasattr(layer, "get_attn_backend"):
                continue
            if getattr(layer, "attn_type", None) == "decoder":
                yield name, layer

    def views(self, runner) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(key cache, value cache) of every target attention layer, each cache once."""
        if self._views is None:
            out, seen = [], set()
            for _, layer in self.target_layers(runner):
                kv = layer.kv_cache
                if isinstance(kv, torch.Tensor) and kv.numel() and kv.data_ptr() not in seen:
                    seen.add(kv.data_ptr())
                    out.append(target_kv_views(kv, layer.get_attn_backend().get_name(),
                                               getattr(layer, "isa", None)))
            self._views = out
        return self._views
