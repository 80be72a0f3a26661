"""What tree verification can serve, checked at start-up: the engine's settings and every
target attention layer. Tree verification recomputes the rows of branching trees as plain
causal attention over the whole cached context plus the node's path, in the whole step's
token rows; whatever makes the target's attention anything else, or splits the step's
rows or the context across ranks, is refused with ``"tree"``, naming the setting or the
layer (chains are unaffected)."""

from __future__ import annotations

import logging

from .target_kv import KNOWN_CPU_LAYOUTS, TREE_BACKENDS, UNQUANTIZED_CACHE_DTYPES

logger = logging.getLogger(__name__)

DROP_TREE = 'drop "tree" from the speculative config to draft chains'


def tree_backend_refusal(backend: str) -> str:
    return (f'vispec "tree" verifies trees with the {", ".join(TREE_BACKENDS)} attention '
            f"backends; the target's attention runs on {backend}: pick one of those with "
            f"--attention-backend, or {DROP_TREE}")


def unsupported_engine_setting(vllm_config) -> str | None:
    """The engine setting tree verification does not serve (None: none)."""
    parallel = vllm_config.parallel_config
    if getattr(parallel, "decode_context_parallel_size", 1) > 1 or \
            getattr(parallel, "prefill_context_parallel_size", 1) > 1:
        return "context parallelism (each rank caches part of the context)"
    if getattr(parallel, "use_ubatching", False):
        return "micro-batching (--enable-dbo / ubatch_size: the step's rows are split)"
    model = vllm_config.model_config
    if getattr(model, "is_mm_prefix_lm", False):
        return "bidirectional attention over image prefixes (a prefix-LM target)"
    if getattr(model, "rswa_window", None):
        return "a recurrent sliding window"
    mm = getattr(model, "multimodal_config", None)
    if mm is not None and mm.is_multimodal_pruning_enabled():
        # vLLM recomputes M-RoPE positions after the tree patch sets them.
        return "video pruning (--video-pruning-rate)"
    return None


def unsupported_tree_attention(impl) -> str | None:
    """What in a target attention layer's implementation tree attention does not do
    (None: plain causal attention over an unquantized cache, which it does)."""
    if getattr(impl, "sliding_window", None) not in (None, -1, (-1, -1)):
        return "a sliding window"
    if getattr(impl, "alibi_slopes", None) is not None:
        return "ALiBi"
    if getattr(impl, "logits_soft_cap", None):
        return "logit soft-capping"
    if getattr(impl, "sinks", None) is not None:
        return "attention sinks"
    if getattr(impl, "chunk_lookback", None):
        return "chunked attention"
    if getattr(impl, "kv_sharing_target_layer_name", None) is not None:
        return "a KV cache shared with another layer"
    dtype = str(getattr(impl, "kv_cache_dtype", "auto")).removeprefix("torch.")
    if dtype not in UNQUANTIZED_CACHE_DTYPES:
        return f"a quantized KV cache ({dtype})"
    return None


def check_tree_engine(vllm_config, layers) -> None:
    """Refuses, at start-up, an engine or a target whose attention tree verification
    cannot read or attend (``layers``: the target's (name, Attention layer) pairs)."""
    why = unsupported_engine_setting(vllm_config)
    if why is not None:
        raise ValueError(f'vispec "tree" verification does not support {why}; {DROP_TREE}')
    check_tree_targets(layers)


def check_tree_targets(layers) -> None:
    from ..patches.registry import applied_patches
    for name, layer in layers:
        backend = layer.get_attn_backend().get_name()
        impl = layer.impl
        if backend not in TREE_BACKENDS or not any(
                p.startswith("tree_attention_") for p in applied_patches(type(impl).forward)):
            raise ValueError(tree_backend_refusal(backend) + f" (layer {name})")
        why = unsupported_tree_attention(impl)
        if why is not None:
            raise ValueError(
                f'vispec "tree" verification supports plain causal attention over an '
                f"unquantized KV cache; the target's layer {name} uses {why}: {DROP_TREE}")
        isa = getattr(layer, "isa", None)  # set once the CPU backend's metadata exists
        if backend == "CPU_ATTN" and isa is not None and isa not in KNOWN_CPU_LAYOUTS:
            raise ValueError(
                f"vispec tree verification reads vLLM's CPU KV cache, whose layout for the "
                f"{isa!r} attention ISA it does not know (known: {KNOWN_CPU_LAYOUTS}); "
                f"{DROP_TREE}")
        head_size = getattr(impl, "head_size", 64)
        if backend != "CPU_ATTN" and (head_size & (head_size - 1) or head_size < 16):
            logger.warning(
                "vispec: the target's head size %d is not a power of two >= 16, so tree "
                "attention runs its PyTorch reference instead of the Triton kernel (slower, "
                "with host reads per layer)", head_size)
