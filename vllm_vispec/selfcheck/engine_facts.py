"""What an engine really runs, read inside its worker: attention backends, KV cache layout
and dtype, model runner and drafter, and whether vllm-vispec is loaded there.

:func:`worker_facts` is sent to every worker with ``LLM.collective_rpc`` (its first argument
is the worker), so it sees the built engine whatever process layout vLLM uses.
"""

from __future__ import annotations

import sys
from typing import Any


def describe_layout(name: str | None) -> str:
    """``LBHNC`` -> ``LBHNC (head-major)``: whether a block stores heads or tokens outermost."""
    if not name:
        return "unknown"
    from vllm.v1.kv_cache_layout import KVCacheLayout
    try:
        order = KVCacheLayout[name].layer_view_order  # physical order of [B, H, N, C]
    except KeyError:
        return name
    return f"{name} ({'head-major' if order.index(1) < order.index(2) else 'token-major'})"


def plugin_state() -> dict[str, Any]:
    """Whether vllm-vispec was registered in this process, and which of its patches of vLLM
    are in place (a baseline must show none)."""
    plugin = sys.modules.get("vllm_vispec.plugin")
    applied = []
    if plugin is not None:
        from ..patches import PATCHES
        for patch in PATCHES:
            try:
                if patch.is_applied():
                    applied.append(patch.name)
            except Exception:  # a target module this platform does not import
                pass
    return {"registered": bool(plugin is not None and plugin._registered),
            "patches_applied": applied}


def trees_unsupported(platform, isa: str | None, backend: str | None = None) -> str | None:
    """Why vispec trees cannot run in this engine (None: they can): what vispec's config
    accepts, the attention backends tree verification patches, and on the CPU the
    attention ISAs whose cache layout it reads."""
    from ..config import check_tree_platform
    from ..tree.target_kv import KNOWN_CPU_LAYOUTS, TREE_BACKENDS
    try:
        check_tree_platform()
    except ValueError:
        return (f"not supported on {platform}: vispec trees run on vLLM's CPU and CUDA "
                "builds only")
    if backend is not None and backend not in TREE_BACKENDS:
        return (f"not supported on the {backend} attention backend (supported: "
                f"{', '.join(TREE_BACKENDS)})")
    if isa is not None and isa not in KNOWN_CPU_LAYOUTS:
        return f"not supported on the CPU attention ISA {isa!r} (known: {KNOWN_CPU_LAYOUTS})"
    return None


def _cache_facts(layer) -> dict[str, Any]:
    kv = layer.kv_cache
    if isinstance(kv, (list, tuple)):  # one per virtual engine in some vLLM versions
        kv = kv[0] if kv else None
    out: dict[str, Any] = {"backend": layer.get_attn_backend().get_name(),
                           "impl": type(layer.impl).__name__}
    isa = getattr(layer, "isa", None)
    if isa is not None:  # CPU backend only
        out["isa"] = isa
    if hasattr(kv, "shape"):
        out.update(kv_shape=list(kv.shape), kv_stride=list(kv.stride()),
                   kv_dtype=str(kv.dtype).removeprefix("torch."))
    return out


def worker_facts(worker) -> dict[str, Any]:
    import torch
    from vllm.platforms import current_platform

    worker = getattr(worker, "worker", worker)  # WorkerWrapperBase -> the worker
    runner = worker.model_runner
    drafter = getattr(runner, "drafter", None)
    context = runner.compilation_config.static_forward_context
    draft_names = set(getattr(drafter, "_draft_attn_layer_names", None) or ())
    attn = {name: layer for name, layer in context.items()
            if hasattr(layer, "get_attn_backend") and hasattr(layer, "kv_cache")}
    target = [attn[n] for n in sorted(attn) if n not in draft_names]
    draft = [attn[n] for n in sorted(attn) if n in draft_names]
    cache = runner.cache_config
    facts = {
        "platform": current_platform.device_name,
        "device": current_platform.get_device_name(),
        "torch": torch.__version__,
        "model_dtype": str(runner.model_config.dtype).removeprefix("torch."),
        "model_runner": type(runner).__name__,
        "drafter": type(drafter).__name__ if drafter is not None else None,
        "kv_cache_layout": describe_layout(getattr(cache, "kv_cache_layout", None)),
        "cache_dtype": cache.cache_dtype,
        "target_attention": _cache_facts(target[0]) if target else None,
        "draft_attention": _cache_facts(draft[0]) if draft else None,
        "draft_attention_layers": len(draft),
        "plugin": plugin_state(),
    }
    if facts["plugin"]["registered"]:  # never import vispec code into a baseline
        target_facts = facts["target_attention"] or {}
        where = current_platform.device_name + (
            f" ({target_facts['backend']})" if target_facts.get("backend") else "")
        facts["trees_unsupported"] = trees_unsupported(where, target_facts.get("isa"),
                                                       target_facts.get("backend"))
    if current_platform.is_cuda_alike():
        major, minor = torch.cuda.get_device_capability()
        facts["compute_capability"] = f"{major}.{minor}"
    return facts
