"""Kernel tests: on a machine without CUDA, Triton runs in its interpreter.

These tests run in their own pytest process (scripts/test.sh does that): Triton reads
TRITON_INTERPRET when kernels are defined, and it must never reach a vLLM process. They
need torch and Triton only, so they also run from a plain checkout on a GPU machine.
"""

import importlib
import os
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

try:
    import vllm_vispec.kernels  # noqa: F401  (installed: kernels/ maps here)
except ImportError:  # a checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    import vllm_vispec
    sys.modules["vllm_vispec.kernels"] = importlib.import_module("kernels")
    vllm_vispec.kernels = sys.modules["vllm_vispec.kernels"]

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
