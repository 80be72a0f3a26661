"""The CUDA side of tree verification that runs without a GPU: vLLM's own CUDA-graph
dispatcher, set up as on a GPU with FULL and PIECEWISE graphs, never hands a tree step a
FULL graph (whose replay would skip the tree-attention patch) and hands every other step
what it would without the plugin; the patches name vLLM's real backend methods; targets
whose attention tree verification cannot do are refused at start-up, by name."""

from __future__ import annotations

import importlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from vllm.config import CompilationMode, CUDAGraphMode, VllmConfig
from vllm.v1.cudagraph_dispatcher import CudagraphDispatcher
from vllm.v1.worker.gpu_model_runner import GPUModelRunner

from vllm_vispec.patches import PATCHES, tree_verification
from vllm_vispec.patches.registry import MARKER
from vllm_vispec.model.kv_layout import check_kernel_block_sizes
from vllm_vispec.tree.support import check_tree_engine, check_tree_targets

BY_NAME = {p.name: p for p in PATCHES}
SPEC_TOKENS = 3  # a uniform verify batch: 1 + 3 tokens per request


def gpu_like_runner():
    """What _determine_batch_execution_and_padding reads of a runner, with vLLM's own
    dispatcher holding the keys a CUDA engine with FULL_AND_PIECEWISE graphs captures."""
    config = VllmConfig()
    compilation = config.compilation_config
    compilation.mode = CompilationMode.VLLM_COMPILE
    compilation.splitting_ops = list(compilation._attention_ops)
    compilation.cudagraph_mode = CUDAGraphMode.FULL_AND_PIECEWISE
    compilation.cudagraph_capture_sizes = [1, 2, 4, 8, 16, 32]
    compilation.max_cudagraph_capture_size = 32
    dispatcher = CudagraphDispatcher(config)
    dispatcher.uniform_decode_query_len = 1 + SPEC_TOKENS
    dispatcher.initialize_cudagraph_keys(CUDAGraphMode.FULL_AND_PIECEWISE,
                                         uniform_decode_query_len=1 + SPEC_TOKENS)
    return SimpleNamespace(
        _is_uniform_decode=GPUModelRunner._is_uniform_decode,
        uniform_decode_query_len=1 + SPEC_TOKENS, cudagraph_dispatcher=dispatcher,
        model_config=SimpleNamespace(is_encoder_decoder=False),
        input_batch=SimpleNamespace(lora_id_to_lora_request={}), vllm_config=config,
        parallel_config=config.parallel_config, _vispec_tree_step=None)


def batch_mode(runner):
    vllms = GPUModelRunner._determine_batch_execution_and_padding
    while hasattr(vllms, MARKER):  # the plugin may be registered in this process
        vllms = vllms.__wrapped__
    determine = BY_NAME["tree_steps_outside_full_graphs"].make_wrapper(vllms)
    reqs = 2
    mode, descriptor, *_ = determine(
        runner, num_tokens=reqs * (1 + SPEC_TOKENS), num_reqs=reqs,
        num_scheduled_tokens_np=np.full(reqs, 1 + SPEC_TOKENS),
        max_num_scheduled_tokens=1 + SPEC_TOKENS)
    return mode


@pytest.fixture(autouse=True)
def no_tree_step_in_flight():
    tree_verification._set_active(None, {})
    yield
    tree_verification._set_active(None, {})


def test_a_tree_step_never_gets_a_full_graph():
    runner = gpu_like_runner()
    assert batch_mode(runner) == CUDAGraphMode.FULL  # a chain step: vLLM's choice
    step = object()
    runner._vispec_tree_step = step
    tree_verification._set_active(step, {})
    assert batch_mode(runner) == CUDAGraphMode.PIECEWISE
    assert "dispatch" not in vars(runner.cudagraph_dispatcher)  # vLLM's method again
    # A stale step on the runner (its sampling is over) changes nothing.
    tree_verification._set_active(None, {})
    assert batch_mode(runner) == CUDAGraphMode.FULL


@pytest.mark.parametrize("name,cls", [
    ("tree_attention_flash_attn", "FlashAttentionImpl"),
    ("tree_attention_flashinfer", "FlashInferImpl"),
    ("tree_attention_triton_attn", "TritonAttentionImpl"),
    ("tree_steps_outside_full_graphs", "GPUModelRunner")])
def test_cuda_patches_name_vllms_methods(name, cls, monkeypatch):
    from test_kv_layout import backend_class
    if name == "tree_attention_flashinfer":
        backend_class("FLASHINFER", monkeypatch)  # stand-ins for the flashinfer package
    patch = BY_NAME[name]
    module, qualname = patch.target.split(":")
    assert qualname.split(".")[0] == cls
    owner, attr = patch.owner_and_attr()
    assert callable(getattr(owner, attr))
    assert patch.platform in ("cuda", None)
    assert importlib.import_module(module)


def layer(backend: str, patched: bool, **impl_fields):
    def forward(self, *args):
        return None
    if patched:
        setattr(forward, MARKER, "tree_attention_flash_attn")
    impl_cls = type("Impl", (), {"forward": forward})
    impl = impl_cls()
    for key, value in {"sliding_window": (-1, -1), "alibi_slopes": None,
                       "logits_soft_cap": None, "sinks": None, "kv_cache_dtype": "auto",
                       **impl_fields}.items():
        setattr(impl, key, value)
    return SimpleNamespace(get_attn_backend=lambda: SimpleNamespace(get_name=lambda: backend),
                           impl=impl)


def test_targets_tree_verification_cannot_serve_are_refused_at_start_up():
    check_tree_targets([("model.layers.0.self_attn.attn", layer("FLASH_ATTN", True))])
    with pytest.raises(ValueError, match="FLEX_ATTENTION.*--attention-backend.*layers.3"):
        check_tree_targets([("model.layers.3.self_attn.attn",
                             layer("FLEX_ATTENTION", True))])
    with pytest.raises(ValueError, match="runs on FLASH_ATTN"):  # the patch is missing
        check_tree_targets([("l", layer("FLASH_ATTN", False))])
    for fields, why in [({"sliding_window": (127, 0)}, "a sliding window"),
                        ({"kv_cache_dtype": "fp8_e4m3"}, "a quantized KV cache"),
                        ({"sinks": object()}, "attention sinks"),
                        ({"logits_soft_cap": 30.0}, "soft-capping")]:
        with pytest.raises(ValueError, match=why):
            check_tree_targets([("l", layer("FLASH_ATTN", True, **fields))])


def engine(**changes):
    parallel = SimpleNamespace(decode_context_parallel_size=1, prefill_context_parallel_size=1,
                               use_ubatching=False)
    model = SimpleNamespace(is_mm_prefix_lm=False, rswa_window=None,
                            multimodal_config=SimpleNamespace(
                                is_multimodal_pruning_enabled=lambda: False))
    for key, value in changes.items():
        owner, name = key.split("__")
        setattr(parallel if owner == "parallel" else model, name, value)
    return SimpleNamespace(parallel_config=parallel, model_config=model)


def test_engine_settings_tree_verification_cannot_serve_are_refused():
    ok = [("l", layer("FLASH_ATTN", True))]
    check_tree_engine(engine(), ok)
    pruning = SimpleNamespace(is_multimodal_pruning_enabled=lambda: True)
    for changes, why in [({"parallel__decode_context_parallel_size": 2}, "context parallel"),
                         ({"parallel__use_ubatching": True}, "micro-batching"),
                         ({"model__is_mm_prefix_lm": True}, "image prefixes"),
                         ({"model__multimodal_config": pruning}, "video pruning")]:
        with pytest.raises(ValueError, match=why):
            check_tree_engine(engine(**changes), ok)
    with pytest.raises(ValueError, match="shared with another layer"):
        check_tree_engine(engine(), [("l", layer("FLASH_ATTN", True,
                                                 kv_sharing_target_layer_name="l0"))])


def test_kernel_blocks_smaller_than_the_cache_blocks_are_refused():
    from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec
    spec = FullAttentionSpec(block_size=128, num_kv_heads=2, head_size=64, dtype=torch.float32)
    config = KVCacheConfig(num_blocks=4, kv_cache_tensors=[],
                           kv_cache_groups=[KVCacheGroupSpec(["a"], spec)])
    check_kernel_block_sizes(config, [128])
    check_kernel_block_sizes(config, None)
    with pytest.raises(ValueError, match="kernel blocks of \\[64\\].*--block-size 64"):
        check_kernel_block_sizes(config, [64])
