"""The vLLM surface vllm-vispec stands on, pinned to vLLM 0.32.

Every vLLM function and method the plugin patches, overrides or calls is listed with its
parameter names (inspect.signature, in order); every attribute it reads on vLLM's objects
(runner, input batch, requests, attention metadata, configs, ...) is listed by class. A
vLLM upgrade that moves any of them fails here in seconds, with everything that moved in
one message, instead of deep inside an engine run.

Attributes count as present when the class has them (methods, properties, class or
dataclass fields, annotations) or when a method of the class or of a vLLM base class
assigns ``self.<name>`` (instance attributes set in ``__init__`` and the like).
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import textwrap

from test_kv_layout import backend_class

from vllm_vispec import plugin
from vllm_vispec.patches import PATCHES
from vllm_vispec.patches.registry import MARKER


class attrs(tuple):
    """Attribute names read on instances of the class (or module) the key names."""

    def __new__(cls, *names):
        return super().__new__(cls, names)


RUNNER = "vllm.v1.worker.gpu_model_runner:GPUModelRunner"
EAGLE = "vllm.v1.spec_decode.eagle:EagleProposer"
LINEAR = "vllm.model_executor.layers.linear"

# symbol -> expected parameter names (a tuple), or attrs(...) for attributes it must have.
SURFACE = {
    # ---- patch targets (patches/) -------------------------------------------------------
    "vllm.engine.arg_utils:EngineArgs.create_speculative_config":
        ("self", "target_model_config", "target_parallel_config"),
    "vllm.config.vllm:VllmConfig._get_v2_model_runner_unsupported_features": ("self",),
    "vllm.v1.spec_decode.eagle:EagleProposer.__new__": ("args", "kwargs"),
    f"{RUNNER}._prepare_inputs": ("self", "scheduler_output", "num_scheduled_tokens"),
    "vllm.v1.attention.backends.cpu_attn:CPUAttentionBackendImpl.forward":
        ("self", "layer", "query", "key", "value", "kv_cache", "attn_metadata", "output",
         "output_scale", "output_block_scale"),
    f"{RUNNER}._sample": ("self", "logits", "spec_decode_metadata"),
    **{f"vllm.v1.attention.backends.{impl}.forward":
       ("self", "layer", "query", "key", "value", "kv_cache", "attn_metadata", "output",
        "output_scale", "output_block_scale")
       for impl in ("flash_attn:FlashAttentionImpl", "flashinfer:FlashInferImpl",
                    "triton_attn:TritonAttentionImpl")},
    f"{RUNNER}._determine_batch_execution_and_padding":
        ("self", "num_tokens", "num_reqs", "num_scheduled_tokens_np",
         "max_num_scheduled_tokens", "use_cascade_attn", "allow_microbatching",
         "force_eager", "force_uniform_decode", "force_has_lora", "force_num_active_loras",
         "num_encoder_reqs"),
    "vllm.v1.sample.rejection_sampler:expand_batch_to_tokens":
        ("x", "cu_num_tokens", "num_tokens", "replace_from", "replace_to"),
    "vllm.renderers.base:processor_cache_from_config": ("vllm_config",),
    "vllm.v1.engine.core_client:AsyncMPClient._send_input":
        ("self", "request_type", "request", "engine"),
    "vllm.v1.engine.core_client:SyncMPClient._send_input": ("self", "request_type", "request"),
    "vllm.v1.engine.core_client:InprocClient.add_request": ("self", "request"),
    # ---- vLLM code the patches rely on --------------------------------------------------
    "vllm.v1.cudagraph_dispatcher:CudagraphDispatcher.dispatch":
        ("self", "num_tokens", "uniform_decode", "has_lora", "num_active_loras",
         "valid_modes", "invalid_modes"),
    # What tree verification reads of the target's attention layers and their backends.
    **{f"vllm.v1.attention.backends.{impl}": attrs(
        "scale", "sliding_window", "alibi_slopes", "logits_soft_cap", "sinks",
        "kv_cache_dtype", "head_size", "kv_sharing_target_layer_name",
        *(() if impl.startswith("flashinfer") else ("attn_type",)),
        *(("chunk_lookback",) if impl.startswith("triton") else ()))
       for impl in ("flash_attn:FlashAttentionImpl", "flashinfer:FlashInferImpl",
                    "triton_attn:TritonAttentionImpl", "cpu_attn:CPUAttentionBackendImpl")},
    "vllm.model_executor.layers.attention.attention:Attention": attrs(
        "get_attn_backend", "impl", "kv_cache", "attn_type", "layer_name"),
    f"{RUNNER}": attrs("cudagraph_dispatcher", "positions", "mrope_positions",
                       "uses_mrope"),
    "vllm.config.vllm:VllmConfig._validate_v2_model_runner": ("self",),
    "vllm.config.vllm:VllmConfig": attrs(
        "use_v2_model_runner", "speculative_config", "attention_config", "watermark_config",
        "parallel_config", "model_config", "cache_config", "compilation_config"),
    "vllm.config.attention:AttentionConfig": attrs("hisparse_config"),
    "vllm.envs": attrs("VLLM_USE_V2_MODEL_RUNNER"),
    "vllm.platforms.interface:Platform": attrs("is_cpu"),
    "vllm.engine.arg_utils:EngineArgs": attrs(
        "speculative_config", "spec_method", "spec_model", "spec_tokens"),
    "vllm.config.speculative:SpeculativeConfig": attrs(
        "method", "model", "num_speculative_tokens", "draft_model_config",
        "parallel_drafting", "kv_cache_dtype", "num_speculative_tokens_per_batch_size",
        "disable_padded_drafter_batch"),
    "vllm.config.parallel:ParallelConfig": attrs("pipeline_parallel_size",
                                                 "data_parallel_size",
                                                 "decode_context_parallel_size",
                                                 "prefill_context_parallel_size"),
    "vllm.config.model:ModelConfig": attrs("model", "max_model_len", "hf_config",
                                           "multimodal_config"),
    "vllm.config.model:ModelConfig.get_hidden_size": ("self",),
    "vllm.config.model:ModelConfig.get_vocab_size": ("self",),
    "vllm.config.model:ModelConfig.get_num_layers": ("self", "parallel_config"),
    "vllm.config.cache:CacheConfig": attrs("cache_dtype"),
    "vllm.config.compilation:CompilationConfig": attrs("static_forward_context"),
    "vllm.config.compilation:CUDAGraphMode": attrs("NONE"),
    "vllm:ModelRegistry.register_model": ("model_arch", "model_cls"),
    "vllm:ModelRegistry.get_supported_archs": (),
    # ---- the classic runner and what hangs off it ----------------------------------------
    RUNNER: attrs(
        "vllm_config", "requests", "input_batch", "drafter", "query_start_loc", "positions",
        "mrope_positions", "uses_mrope", "seq_lens", "kv_cache_config",
        "compilation_config"),
    f"{RUNNER}._get_encoder_output_from_cache": ("self", "mm_hash"),
    "vllm.v1.worker.gpu_input_batch:InputBatch": attrs(
        "req_ids", "num_reqs", "block_table", "sampling_metadata"),
    "vllm.v1.worker.gpu_input_batch:CachedRequestState": attrs(
        "mm_features", "num_prompt_tokens", "sampling_params", "get_token_id"),
    "vllm.v1.worker.gpu_input_batch:CachedRequestState.get_token_id": ("self", "idx"),
    "vllm.v1.worker.block_table:MultiGroupBlockTable.__getitem__": ("self", "idx"),
    "vllm.v1.worker.block_table:BlockTable": attrs("block_table", "slot_mapping"),
    "vllm.v1.utils:CpuGpuBuffer": attrs("cpu", "gpu"),
    "vllm.v1.kv_cache_interface:KVCacheConfig": attrs("kv_cache_groups"),
    "vllm.v1.kv_cache_interface:KVCacheGroupSpec": attrs("layer_names"),
    "vllm.v1.core.sched.output:SchedulerOutput": attrs("scheduled_spec_decode_tokens"),
    "vllm.v1.spec_decode.metadata:SpecDecodeMetadata": attrs(
        "num_draft_tokens", "max_spec_len"),
    "vllm.v1.sample.metadata:SamplingMetadata": attrs(
        "temperature", "top_k", "top_p", "generators", "no_penalties", "max_num_logprobs",
        "bad_words_token_ids", "allowed_token_ids_mask"),
    "vllm.sampling_params:SamplingParams": attrs("min_tokens", "min_p", "structured_outputs"),
    "vllm.v1.outputs:SamplerOutput.__init__": ("self", "sampled_token_ids", "logprobs_tensors"),
    "vllm.v1.sample.ops.topk_topp_sampler:apply_top_k_top_p": ("logits", "k", "p"),
    "vllm.multimodal.inputs:MultiModalFeatureSpec": attrs(
        "data", "modality", "identifier", "mm_position", "mm_hash"),
    "vllm.multimodal.inputs:PlaceholderRange": attrs("offset", "length"),
    # ---- attention ------------------------------------------------------------------------
    "vllm.v1.attention.backend:CommonAttentionMetadata": attrs(
        "num_reqs", "query_start_loc_cpu", "seq_lens", "block_table_tensor", "slot_mapping"),
    "vllm.v1.attention.backends.cpu_attn:CPUAttentionBackendImpl": attrs(
        "attn_type", "sliding_window", "alibi_slopes", "logits_soft_cap", "sinks", "scale"),
    "vllm.model_executor.layers.attention:Attention": attrs(
        "layer_name", "kv_cache", "attn_backend", "num_kv_heads", "head_size"),
    "vllm.model_executor.layers.attention:Attention.__init__":
        ("self", "num_heads", "head_size", "scale", "num_kv_heads", "alibi_slopes",
         "use_alibi_sqrt", "cache_config", "quant_config", "logits_soft_cap",
         "per_layer_sliding_window", "prefix", "attn_type", "kv_sharing_target_layer_name",
         "mm_prefix_clamp_sliding_window", "attn_backend", "head_size_v",
         "extra_impl_args"),
    "vllm.model_executor.layers.attention:Attention.bind_kv_cache": ("self", "kv_cache"),
    "vllm.v1.kv_cache_interface:is_quantized_kv_cache": ("kv_cache_dtype",),
    # ---- EagleProposer: what VispecProposer overrides, calls and reads --------------------
    f"{EAGLE}.__init__": ("self", "vllm_config", "device", "runner"),
    f"{EAGLE}.propose":
        ("self", "num_speculative_tokens", "target_token_ids", "target_positions",
         "target_hidden_states", "next_token_ids", "token_indices_to_sample",
         "common_attn_metadata", "sampling_metadata", "mm_embed_inputs",
         "num_rejected_tokens_gpu", "slot_mappings"),
    f"{EAGLE}.prepare_inputs":
        ("self", "common_attn_metadata", "sampled_token_ids", "num_draft_tokens"),
    f"{EAGLE}.prepare_next_token_ids_padded":
        ("self", "sampled_token_ids", "requests", "gpu_input_batch", "discard_request_mask"),
    f"{EAGLE}.initialize_cudagraph_keys": ("self", "cudagraph_mode"),
    f"{EAGLE}._set_positions": ("self", "num_tokens", "positions"),
    f"{EAGLE}._sample_draft_tokens": ("self", "hidden_states", "sampling_metadata"),
    f"{EAGLE}.build_per_group_and_layer_attn_metadata":
        ("self", "common_attn_metadata", "draft_index"),
    f"{EAGLE}.build_model_inputs_first_pass":
        ("self", "num_tokens", "num_input_tokens", "mm_embed_inputs"),
    f"{EAGLE}.dummy_run":
        ("self", "num_tokens", "use_cudagraphs", "is_graph_capturing", "slot_mappings"),
    f"{EAGLE}.load_model": ("self", "target_model"),
    f"{EAGLE}.initialize_attn_backend": ("self", "kv_cache_config", "kernel_block_sizes"),
    # What tree verification's start-up checks read (tree/support.py).
    "vllm.config.parallel:ParallelConfig.use_ubatching": attrs("fget"),
    "vllm.config.model:ModelConfig.is_mm_prefix_lm": attrs("func"),
    "vllm.config.model:ModelConfig.rswa_window": attrs("fget"),
    "vllm.config.multimodal:MultiModalConfig.is_multimodal_pruning_enabled": ("self",),
    "vllm.v1.kv_cache_interface:KVCacheGroupSpec": attrs("kv_cache_spec", "layer_names"),
    "vllm.v1.kv_cache_interface:AttentionSpec": attrs("block_size"),
    EAGLE: attrs("num_speculative_tokens", "model", "positions", "_draft_attn_layer_names",
                 "speculative_config", "vllm_config"),
    # ---- vLLM's dynamic speculation schedule and DP coordination (the drafting knobs) ----
    "vllm.config.speculative:SpeculativeConfig.uses_dynamic_speculative_decoding": ("self",),
    "vllm.v1.spec_decode.dynamic.utils:validate_and_normalize_dynamic_sd_schedule":
        ("num_speculative_tokens_per_batch_size",),
    "vllm.v1.worker.dp_utils:skip_dp_coordination": (),
    # ---- the draft model's vLLM layers (model/) ----------------------------------------
    "vllm.model_executor.layers.vocab_parallel_embedding:VocabParallelEmbedding.__init__":
        ("self", "num_embeddings", "embedding_dim", "params_dtype", "org_num_embeddings",
         "padding_size", "quant_config", "prefix", "disable_tp", "reduce_results",
         "quant_method", "parallel_group"),
    f"{LINEAR}:ReplicatedLinear.__init__":
        ("self", "input_size", "output_size", "bias", "skip_bias_add", "params_dtype",
         "quant_config", "prefix", "return_bias", "disable_tp"),
    f"{LINEAR}:QKVParallelLinear.__init__":
        ("self", "hidden_size", "head_size", "total_num_heads", "total_num_kv_heads", "bias",
         "skip_bias_add", "params_dtype", "quant_config", "prefix", "return_bias",
         "disable_tp", "v_head_size"),
    f"{LINEAR}:RowParallelLinear.__init__":
        ("self", "input_size", "output_size", "bias", "input_is_parallel", "skip_bias_add",
         "params_dtype", "reduce_results", "quant_config", "prefix", "return_bias",
         "disable_tp"),
    f"{LINEAR}:MergedColumnParallelLinear.__init__":
        ("self", "input_size", "output_sizes", "bias", "gather_output", "skip_bias_add",
         "params_dtype", "quant_config", "prefix", "return_bias", "disable_tp"),
    "vllm.model_executor.layers.logits_processor:LogitsProcessor.__init__":
        ("self", "vocab_size", "org_vocab_size", "scale", "logits_as_input", "soft_cap"),
    "vllm.model_executor.layers.layernorm:RMSNorm.__init__":
        ("self", "hidden_size", "eps", "var_hidden_size", "has_weight", "dtype"),
    "vllm.model_executor.layers.activation:SiluAndMul.__init__": ("self", "compile_native"),
    "vllm.model_executor.layers.rotary_embedding:get_rope":
        ("head_size", "max_position", "is_neox_style", "rope_parameters", "dtype",
         "dual_chunk_attention_config", "mrope_positions_factor"),
    "vllm.distributed:get_tensor_model_parallel_world_size": (),
    "vllm.model_executor.model_loader.weight_utils:default_weight_loader":
        ("param", "loaded_weight"),
    "vllm.model_executor.models.utils:_merge_multimodal_embeddings":
        ("inputs_embeds", "multimodal_embeddings", "is_multimodal"),
    "vllm.model_executor.models.interfaces:SupportsMultiModalEmbeddings": attrs(),
    # ---- the front end's multimodal cache (patches/mm_cache_delivery.py) -----------------
    "vllm.multimodal.cache:LruKeyReplicatedSenderCache": attrs("_cache"),
    "vllm.multimodal.cache:LruKeyReplicatedSenderCache.__init__": ("self", "model_config"),
    "vllm.multimodal.cache:LruKeyReplicatedSenderCache.is_cached_item": ("self", "mm_hash"),
    "vllm.multimodal.cache:LruKeyReplicatedSenderCache.get_and_update_item":
        ("self", "mm_item", "mm_hash"),
    "vllm.multimodal.cache:LruKeyReplicatedSenderCache.invalidate": ("self", "mm_hash"),
    "vllm.multimodal.cache:LruKeyReplicatedSenderCache.clear_cache": ("self",),
    "vllm.v1.engine:EngineCoreRequestType": attrs("ADD"),
    "vllm.v1.engine:EngineCoreRequest": attrs("mm_features"),
    # ---- the scheduler's encoder look-ahead (patches/encoder_budget.py) -----------------
    "vllm.v1.core.sched.scheduler:Scheduler._try_schedule_encoder_inputs":
        ("self", "request", "num_computed_tokens", "num_new_tokens", "encoder_compute_budget",
         "shift_computed_tokens"),
    "vllm.v1.core.sched.scheduler:Scheduler._free_encoder_input": ("self", "request", "input_id"),
    "vllm.v1.core.sched.scheduler:Scheduler": attrs("vllm_config", "encoder_cache_manager"),
    "vllm.v1.core.encoder_cache_manager:EncoderCacheManager.get_cached_input_ids":
        ("self", "request"),
    "vllm.v1.request:Request": attrs("num_computed_tokens", "num_output_placeholders",
                                     "mm_features"),
    f"{RUNNER}._gather_mm_embeddings": ("self", "scheduler_output", "shift_computed_tokens"),
    # ---- prompts mixing images and videos (patches/media_mix.py) ------------------------
    "vllm.v1.engine.input_processor:InputProcessor._validate_model_inputs":
        ("self", "encoder_input", "decoder_input"),
    "vllm.v1.engine.input_processor:InputProcessor": attrs("vllm_config"),
}


def resolve(symbol: str):
    module_name, _, qualname = symbol.partition(":")
    obj = importlib.import_module(module_name)
    for part in qualname.split(".") if qualname else ():
        obj = getattr(obj, part)
    return obj


def original_callable(obj):
    """vLLM's own function under our patches (they keep it as ``__wrapped__``)."""
    while hasattr(obj, MARKER):
        obj = obj.__wrapped__
    return obj


def self_assigned(cls) -> set[str]:
    """Names assigned as ``self.<name>`` in the methods of ``cls`` and its vLLM bases."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if not klass.__module__.startswith("vllm."):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) \
                    and isinstance(node.value, ast.Name) and node.value.id == "self":
                names.add(node.attr)
    return names


def has_attribute(owner, name: str) -> bool:
    if hasattr(owner, name):
        return True
    if not inspect.isclass(owner):
        return False
    if dataclasses.is_dataclass(owner) and name in {f.name for f in dataclasses.fields(owner)}:
        return True
    if any(name in getattr(k, "__annotations__", {}) for k in owner.__mro__):
        return True
    return name in self_assigned(owner)


def surface_problems(surface: dict) -> list[str]:
    problems = []
    for symbol, expected in surface.items():
        try:
            obj = resolve(symbol)
        except (ImportError, AttributeError) as e:
            problems.append(f"{symbol}: missing ({type(e).__name__}: {e})")
            continue
        if isinstance(expected, attrs):
            missing = [name for name in expected if not has_attribute(obj, name)]
            if missing:
                problems.append(f"{symbol}: no attribute(s) {missing}")
            continue
        try:
            got = tuple(inspect.signature(original_callable(obj)).parameters)
        except (TypeError, ValueError) as e:
            problems.append(f"{symbol}: no signature ({e})")
            continue
        if got != expected:
            problems.append(f"{symbol}: parameters {got}, expected {expected}")
    return problems


def test_the_vllm_surface_is_where_the_plugin_expects_it(monkeypatch):
    backend_class("FLASHINFER", monkeypatch)  # its module needs the flashinfer package
    plugin.register()  # the patches' wrappers must not hide what vLLM's originals look like
    problems = surface_problems(SURFACE)
    assert not problems, (
        f"{len(problems)} vLLM symbol(s) vllm-vispec depends on moved or changed (this "
        "table is pinned to vLLM 0.32; update the plugin, then the table):\n  "
        + "\n  ".join(problems))


def test_every_patch_target_is_pinned():
    unpinned = sorted({p.target for p in PATCHES} - set(SURFACE))
    assert not unpinned, f"patch targets missing from SURFACE: {unpinned}"


def test_every_eagle_method_the_proposer_overrides_is_pinned_with_its_signature():
    from vllm.v1.spec_decode.eagle import EagleProposer

    from vllm_vispec.proposer import VispecProposer
    overridden = [name for name, value in vars(VispecProposer).items()
                  if callable(value) and hasattr(EagleProposer, name)]
    assert "propose" in overridden
    problems = []
    for name in overridden:
        if f"{EAGLE}.{name}" not in SURFACE:
            problems.append(f"{name}: not pinned")
            continue
        ours = tuple(inspect.signature(vars(VispecProposer)[name]).parameters)
        if ours != SURFACE[f"{EAGLE}.{name}"]:
            problems.append(f"{name}: VispecProposer takes {ours}")
    assert not problems, problems


def test_the_check_finds_what_moved():
    moved = {
        f"{RUNNER}._sample": ("self", "logits"),
        "vllm.v1.attention.backend:CommonAttentionMetadata": attrs("num_reqs", "no_such"),
        RUNNER: attrs("input_batch", "no_such_buffer"),
        "vllm.v1.spec_decode.eagle:NoSuchProposer.propose": ("self",),
    }
    problems = surface_problems(moved)
    assert len(problems) == 4, problems
    assert "parameters ('self', 'logits', 'spec_decode_metadata')" in problems[0]
    assert "['no_such']" in problems[1] and "['no_such_buffer']" in problems[2]
    assert "missing" in problems[3]
