"""Whether bf16 autocast pays on this machine's CPU.

With native bf16 (AVX512-BF16 or AMX) autocast trains about 2.5x faster than fp32; without
it PyTorch emulates bf16 matmuls and a step takes minutes instead of seconds.
"""

from __future__ import annotations

import torch


def native_cpu_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_bf16(requested: bool | None, warn=print) -> bool:
    """``None``: bf16 where it is native. ``True`` on a CPU without it: fp32, with a
    warning (the run would otherwise crawl)."""
    if requested is None:
        return native_cpu_bf16()
    if requested and not native_cpu_bf16():
        warn("bf16 was asked for, but this CPU has no native bf16 (AVX512-BF16 or AMX); "
             "training in fp32 instead")
        return False
    return requested
