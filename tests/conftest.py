"""Shared test set-up: offline, tiny local models, repo-local caches."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_VISPEC_CACHE_DIR", str(ROOT / ".cache" / "vllm_vispec"))
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
# Triton's interpreter is for the kernel tests alone, which run in a pytest process of
# their own (VISPEC_KERNEL_TESTS=1, see scripts/test.sh); it must not leak into vLLM.
if os.environ.get("VISPEC_KERNEL_TESTS") != "1":
    os.environ.pop("TRITON_INTERPRET", None)
    collect_ignore = ["kernels"]


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def baseline():
    """Greedy outputs of each tiny target without speculation, from vLLM with no plugin
    loaded (a subprocess, see plain_vllm), computed once per session."""
    from plain_vllm import plain_greedy
    from prompts import conversations

    def get(kind: str) -> dict[str, tuple[list[int], str]]:
        return plain_greedy(kind, conversations())  # plain_vllm caches it

    return get


@pytest.fixture(autouse=True)
def _frozen_heap():
    """Engines that tests build with vLLM's LLM directly skip the frozen heap too (see
    heap.freeze_heap); an engine's shutdown unfreezes it, so this runs per test."""
    from heap import freeze_heap
    freeze_heap()
    yield
