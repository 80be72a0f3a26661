"""Triton, when it is installed and can run here (a CUDA device, or TRITON_INTERPRET=1)."""

from __future__ import annotations

import os

try:
    import triton
    import triton.language as tl
except ImportError:  # the kernels' PyTorch references still work
    triton = None
    tl = None


def interpreting() -> bool:
    # Triton reads this when a kernel is defined: set it before importing the kernels.
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_usable(tensor) -> bool:
    if triton is None:
        return False
    return tensor.is_cuda or (interpreting() and tensor.device.type == "cpu")
