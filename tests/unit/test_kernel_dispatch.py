"""kernel_dispatch's decisions on CPU without running a kernel: the reference by default,
a clear error (not a fallback) when VLLM_VISPEC_KERNELS=triton meets shapes the kernels
cannot take, and the block copy that makes vLLM's CPU cache readable by the kernels.
(The kernels themselves run inside vLLM in tests/e2e/test_interpreter_path.py.)"""

from __future__ import annotations

import sys

import pytest
import torch

from vllm_vispec import kernel_dispatch
from vllm_vispec.kernel_dispatch import INTERPRETED_PACKAGE, KERNELS_ENV, KernelUnavailable
from vllm_vispec.kernels.compressed_attention import compressed_paged_attention_ref


def attention_inputs(head_dim=64, heads=2, block_size=4, num_blocks=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(5, heads, head_dim, generator=g)
    keys = torch.randn(num_blocks, block_size, heads, head_dim, generator=g)
    values = torch.randn(num_blocks, block_size, heads, head_dim, generator=g)
    block_table = torch.tensor([[4, 1, 3], [0, 5, 2]], dtype=torch.int32)
    token_req = torch.tensor([0, 0, 0, 1, 1], dtype=torch.int32)
    positions = torch.tensor([7, 8, 9, 10, 11], dtype=torch.int32)
    kept_starts = torch.tensor([0, 6, 0], dtype=torch.int32)
    kept_ends = torch.tensor([3, 10, 12], dtype=torch.int32)
    cu_kept = torch.tensor([0, 2, 3], dtype=torch.int32)
    return (query, keys, values, block_table, token_req, positions, kept_starts, kept_ends,
            cu_kept, head_dim ** -0.5)


def cpu_key_layout(keys: torch.Tensor) -> torch.Tensor:
    """The same keys stored as vLLM's CPU backend stores them: ``[block, head, D, slot]``
    (dimension-major), viewed as ``[block, slot, head, D]``."""
    return keys.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)


def test_auto_on_cpu_runs_the_reference(monkeypatch):
    monkeypatch.delenv(KERNELS_ENV, raising=False)
    args = attention_inputs()
    before = dict(kernel_dispatch.launches)
    out = kernel_dispatch.compressed_paged_attention(*args)
    torch.testing.assert_close(out, compressed_paged_attention_ref(*args), rtol=0, atol=0)
    assert dict(kernel_dispatch.launches) == before
    assert not kernel_dispatch.wants_kernel(args[0])
    assert not kernel_dispatch.use_image_kernel(torch.zeros(3, 8))


def test_unknown_setting_is_refused(monkeypatch):
    monkeypatch.setenv(KERNELS_ENV, "cuda")
    with pytest.raises(ValueError, match=f"{KERNELS_ENV}='cuda'.*auto, triton, reference"):
        kernel_dispatch.mode()


@pytest.mark.parametrize("problem", ["head_dim", "strided_cache"])
def test_triton_setting_raises_instead_of_falling_back(problem, monkeypatch):
    monkeypatch.setenv(KERNELS_ENV, "triton")
    if problem == "head_dim":
        args = attention_inputs(head_dim=24)
        match = "head_dim 24 is not a power of two"
    else:
        args = list(attention_inputs())
        args[1] = cpu_key_layout(args[1])
        match = "key_cache .* stride 4 in its head dimension"
    assert kernel_dispatch.wants_kernel(args[0])
    with pytest.raises(KernelUnavailable, match=match):
        kernel_dispatch.compressed_paged_attention(*args)
    # Refused before anything was interpreted in this process.
    assert INTERPRETED_PACKAGE not in sys.modules


def test_token_major_blocks_keep_the_attention(monkeypatch):
    args = list(attention_inputs())
    args[1] = cpu_key_layout(args[1])
    keys, values, table = kernel_dispatch.token_major_blocks(args[1], args[2], args[3])
    assert keys.stride(-1) == 1 and values.stride(-1) == 1
    assert keys.shape[0] == 6 and table.dtype == args[3].dtype
    compact = args[:1] + [keys, values, table] + args[4:]
    torch.testing.assert_close(compressed_paged_attention_ref(*compact),
                               compressed_paged_attention_ref(*args), rtol=1e-6, atol=1e-6)
