"""An fp8 target KV cache (--kv-cache-dtype fp8): the draft keeps its own cache in the
model dtype, and its tokens and logits still equal the reference draft's (fed the
target's features as vLLM computed them, so the target's fp8 numerics cancel out).

With the draft's cache in the target's fp8 bytes, written without scales, the logits
are off by far more than the tolerance."""

from __future__ import annotations

import pytest
import test_draft_fidelity as fidelity
import torch

FP8 = "fp8-kv-cache"


@pytest.mark.skipif(not (torch.cpu._is_avx512_supported() or torch.cpu._is_amx_tile_supported()),
                    reason="vLLM's CPU backend serves fp8 KV caches on AVX-512 or AMX only")
def test_draft_matches_the_reference_with_an_fp8_target_cache(monkeypatch):
    monkeypatch.setitem(fidelity.SCHEDULES, FP8, (dict(kv_cache_dtype="fp8"), {}))
    fidelity.test_draft_tokens_and_logits_match_the_reference("llava", FP8, monkeypatch)
