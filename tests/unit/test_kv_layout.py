"""The draft layer's paged KV cache, allocated by vLLM's own code for each attention
backend and layout, is read and written where that backend's own split puts K and V."""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import types

import pytest
import torch
from vllm.config import VllmConfig
from vllm.v1.attention.backends.utils import (get_supported_kv_cache_layouts,
                                              resolve_kv_cache_layout)
from vllm.v1.core.kv_cache_utils import get_kv_cache_config_from_groups
from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheGroupSpec
from vllm.v1.worker.utils import allocate_kv_cache

from vllm_vispec.kernels.compressed_attention import compressed_paged_attention_ref
from vllm_vispec.model.compressed_attention import paged_kv_views, write_kv
from vllm_vispec.model.kv_layout import check_draft_kv_cache

BACKENDS = {  # name: (module, class)
    "FLASH_ATTN": ("vllm.v1.attention.backends.flash_attn", "FlashAttentionBackend"),
    "FLASHINFER": ("vllm.v1.attention.backends.flashinfer", "FlashInferBackend"),
    "TRITON_ATTN": ("vllm.v1.attention.backends.triton_attn", "TritonAttentionBackend"),
    "CPU_ATTN": ("vllm.v1.attention.backends.cpu_attn", "CPUAttentionBackend"),
}
# The GPU generation a case stands for, where a backend's layouts depend on it (FlashInfer:
# token- or head-major on Hopper, head-major only on Blackwell).
CAPABILITIES = {"FLASHINFER": (9, 0), "FLASHINFER@sm100": (10, 0)}
# VLLM_KV_CACHE_LAYOUT values: unset, the legacy names, and every layout by name.
LAYOUT_SETTINGS = [None, "NHD", "HND", "LBNHC", "LBHNC", "BLNHC", "BLHNC", "BHLNC", "LHBNC"]
HEADS, HEAD_DIM, BLOCK, BLOCKS = 4, 8, 16, 6
LAYERS = ["model.layers.0.self_attn.attn", "model.layers.1.self_attn.attn"]


def _stub_flashinfer() -> None:
    """Import stand-ins for the flashinfer package, which only GPU machines have:
    vLLM's FlashInfer backend module imports its kernels at the top, and the layout and
    allocation code tested here never calls them."""
    class Names(types.ModuleType):
        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return type(name, (), {})
    for module in ("flashinfer", "flashinfer.decode", "flashinfer.prefill",
                   "flashinfer.utils"):
        stub = Names(module)
        stub.__spec__ = importlib.machinery.ModuleSpec(module, None)
        sys.modules.setdefault(module, stub)


def backend_class(case: str, monkeypatch=None):
    """vLLM's backend class of a case ("FLASHINFER@sm100": FlashInfer on Blackwell)."""
    name = case.split("@")[0]
    module, cls = BACKENDS[name]
    if name == "FLASHINFER" and importlib.util.find_spec("flashinfer") is None:
        _stub_flashinfer()
    backend = getattr(importlib.import_module(module), cls)
    if case in CAPABILITIES:
        from vllm.platforms import current_platform
        from vllm.platforms.interface import DeviceCapability
        major, minor = CAPABILITIES[case]
        monkeypatch.setattr(current_platform, "get_device_capability",
                            lambda device_id=0: DeviceCapability(major, minor))
    return backend


def vllm_caches(backend, setting, monkeypatch, heads=HEADS, dtype=torch.float32,
                head_size=HEAD_DIM, blocks=BLOCKS):
    """Both layers' caches as vLLM's engine resolves the layout and allocates them."""
    if setting is None:
        monkeypatch.delenv("VLLM_KV_CACHE_LAYOUT", raising=False)
    else:
        monkeypatch.setenv("VLLM_KV_CACHE_LAYOUT", setting)
    config = VllmConfig()
    spec = FullAttentionSpec(block_size=BLOCK, num_kv_heads=heads, head_size=head_size,
                             dtype=dtype)
    supported = [[layout.name for layout in get_supported_kv_cache_layouts([backend])]]
    try:
        layout = resolve_kv_cache_layout(config, supported, [spec])
    except ValueError as e:  # vLLM itself refuses this setting for this backend
        pytest.skip(str(e))
    groups = [KVCacheGroupSpec(list(LAYERS), spec)]
    kv_config = get_kv_cache_config_from_groups(
        config, groups, available_memory=spec.page_size_bytes * len(LAYERS) * blocks)
    caches = allocate_kv_cache(kv_config, torch.device("cpu"), layout)
    return layout, [caches[name] for name in LAYERS]


def backend_split(name: str, kv_cache: torch.Tensor):
    """K and V as the backend's own forward splits the cache (flash_attn.py,
    triton_attn.py, flashinfer.py; cpu_attn.py), as [blocks, block_size, heads, D]."""
    if name == "CPU_ATTN":
        b, h, n, _ = kv_cache.size()
        key, value = kv_cache.view((b, h, n * 2, -1)).chunk(2, dim=2)
        return key.transpose(1, 2), value.transpose(1, 2)
    return kv_cache.transpose(1, 2).split(HEAD_DIM, dim=-1)


CASES = [(b, s) for b in [*BACKENDS, "FLASHINFER@sm100"] for s in LAYOUT_SETTINGS]


@pytest.mark.parametrize("case,setting", CASES)
def test_writes_land_where_the_backend_reads(case, setting, monkeypatch):
    backend = backend_class(case, monkeypatch)
    name = backend.get_name()
    layout, (other, draft) = vllm_caches(backend, setting, monkeypatch)
    split = check_draft_kv_cache(draft, name, HEADS, HEAD_DIM)
    key_cache, value_cache = paged_kv_views(draft, split)
    assert key_cache.shape == (BLOCKS, BLOCK, HEADS, HEAD_DIM) and key_cache.stride(-1) == 1
    gen = torch.Generator().manual_seed(0)
    other.copy_(torch.randn(other.shape, generator=gen))
    before_other = other.clone()
    slots = torch.tensor([3, -1, 17, 40, -1, 95, 16], dtype=torch.int32)
    key = torch.randn(len(slots), HEADS, HEAD_DIM, generator=gen)
    value = torch.randn(len(slots), HEADS, HEAD_DIM, generator=gen)
    write_kv(key_cache, value_cache, key, value, slots)

    backend_key, backend_value = backend_split(name, draft)
    written = torch.zeros(BLOCKS * BLOCK, dtype=torch.bool)
    for i, slot in enumerate(slots.tolist()):
        if slot >= 0:
            written[slot] = True
            torch.testing.assert_close(backend_key[slot // BLOCK, slot % BLOCK], key[i],
                                       rtol=0, atol=0)
            torch.testing.assert_close(backend_value[slot // BLOCK, slot % BLOCK], value[i],
                                       rtol=0, atol=0)
    # Nothing else changed: padding rows wrote nothing, the other layer is untouched.
    untouched = ~written.view(BLOCKS, BLOCK)
    assert (backend_key[untouched] == 0).all() and (backend_value[untouched] == 0).all()
    assert torch.equal(other, before_other), layout


@pytest.mark.parametrize("case,setting", CASES)
def test_reference_attention_over_the_views_equals_a_contiguous_copy(case, setting,
                                                                     monkeypatch):
    backend = backend_class(case, monkeypatch)
    name = backend.get_name()
    _, (_, draft) = vllm_caches(backend, setting, monkeypatch, heads=2)
    draft.copy_(torch.randn(draft.shape, generator=torch.Generator().manual_seed(1)))
    key_cache, value_cache = paged_kv_views(draft, check_draft_kv_cache(draft, name, 2,
                                                                        HEAD_DIM))
    # Two requests, blocks out of order; request 1 skips an image span [5, 20).
    block_table = torch.tensor([[4, 1, 0], [2, 5, 3]], dtype=torch.int32)
    token_req = torch.tensor([0, 0, 1, 1, 1], dtype=torch.int32)
    positions = torch.tensor([30, 31, 21, 22, 40])
    kept_starts = torch.tensor([0, 0, 20], dtype=torch.int32)
    kept_ends = torch.tensor([32, 5, 41], dtype=torch.int32)
    cu_kept = torch.tensor([0, 1, 3], dtype=torch.int32)
    query = torch.randn(5, 4, HEAD_DIM, generator=torch.Generator().manual_seed(2))
    args = (block_table, token_req, positions, kept_starts, kept_ends, cu_kept, 0.3)
    ours = compressed_paged_attention_ref(query, key_cache, value_cache, *args)
    plain = compressed_paged_attention_ref(query, key_cache.contiguous(),
                                           value_cache.contiguous(), *args)
    assert ours.abs().sum() > 0
    torch.testing.assert_close(ours, plain, rtol=0, atol=0)


def test_padding_only_batch_writes_nothing():
    cache = torch.randn(BLOCKS, HEADS, BLOCK, 2 * HEAD_DIM)
    before = cache.clone()
    key_cache, value_cache = paged_kv_views(cache, "last_dim")
    new = torch.randn(3, HEADS, HEAD_DIM)
    write_kv(key_cache, value_cache, new, new, torch.full((3,), -1, dtype=torch.int32))
    assert torch.equal(cache, before)


def test_unknown_backend_is_refused_with_its_name_and_shape():
    cache = torch.zeros(BLOCKS, HEADS, BLOCK, 2 * HEAD_DIM)
    with pytest.raises(ValueError, match=r"FLEX_ATTENTION.*\(6, 4, 16, 16\)"):
        check_draft_kv_cache(cache, "FLEX_ATTENTION", HEADS, HEAD_DIM)


def test_unknown_shapes_are_refused():
    with pytest.raises(ValueError, match=r"TRITON_ATTN.*\(2, 6, 16, 4, 8\)"):
        check_draft_kv_cache(torch.zeros(2, BLOCKS, BLOCK, HEADS, HEAD_DIM), "TRITON_ATTN",
                             HEADS, HEAD_DIM)
    with pytest.raises(ValueError, match="FLASH_ATTN"):  # head count of another layer
        check_draft_kv_cache(torch.zeros(BLOCKS, 2, BLOCK, 2 * HEAD_DIM), "FLASH_ATTN",
                             HEADS, HEAD_DIM)
    with pytest.raises(ValueError, match="quantized"):  # an fp8 cache, stored as bytes
        check_draft_kv_cache(torch.zeros(BLOCKS, HEADS, BLOCK, 2 * HEAD_DIM,
                                         dtype=torch.uint8), "FLASH_ATTN", HEADS, HEAD_DIM)


def test_cpu_backend_refuses_a_token_major_cache(monkeypatch):
    # vLLM never resolves a token-major layout for the CPU backend; if a cache came bound
    # that way, the CPU split (keys then values per block and head) does not exist.
    _, (_, cache) = vllm_caches(backend_class("FLASH_ATTN"), "NHD", monkeypatch)
    with pytest.raises(ValueError, match=r"CPU_ATTN.*one run"):
        check_draft_kv_cache(cache, "CPU_ATTN", HEADS, HEAD_DIM)
