"""Patches: tree verification in vLLM's classic runner (see tree/target_step.py for the
step itself), on the CPU backend and on the CUDA backends vLLM picks for LLaVA and
Qwen2.5-VL targets (FlashAttention, FlashInfer, Triton attention). Each acts only in steps
that verify a branching vispec tree; every other step, and every engine without vispec,
runs vLLM's code unchanged."""

from __future__ import annotations

from ..tree.support import unsupported_tree_attention
from .engine_scope import is_vispec_runner
from .registry import Patch

UPSTREAM = "vllm-project/vllm#42121 (removed tree attention from vLLM)"

# The tree step of the forward in flight and the attention layers of its engine (layer
# name -> layer), read by the attention patch.
_ACTIVE: dict = {"step": None, "layers": {}}


def _set_active(step, layers) -> None:
    _ACTIVE["step"], _ACTIVE["layers"] = step, layers if step is not None else {}


def _in_active_step(layer) -> bool:
    """Whether ``layer`` is one of the layers of the engine whose tree step is in flight
    (a dict lookup; another engine's layers never see a stale step)."""
    return _ACTIVE["layers"].get(getattr(layer, "layer_name", None)) is layer


def _tree_step_for(runner, scheduler_output):
    from ..proposer import VispecProposer
    from ..tree.target_step import TreeStep
    drafter = getattr(runner, "drafter", None)
    if not isinstance(drafter, VispecProposer) or drafter.tree_options is None:
        return None
    spec = scheduler_output.scheduled_spec_decode_tokens
    if not spec:
        return None
    num_reqs = runner.input_batch.num_reqs
    gid = drafter.target_kv_group(runner)
    block_table = runner.input_batch.block_table[gid]
    num_tokens = int(runner.query_start_loc.cpu[num_reqs])
    return TreeStep.build(
        spec, drafter.trees, list(runner.input_batch.req_ids[:num_reqs]),
        runner.query_start_loc.cpu[:num_reqs + 1].tolist(), runner.positions,
        block_table.block_table.gpu[:num_reqs], block_table.slot_mapping.gpu[:num_tokens])


def _wrap_prepare_inputs(original):
    def _prepare_inputs(self, scheduler_output, *args, **kwargs):
        result = original(self, scheduler_output, *args, **kwargs)
        if not is_vispec_runner(self):
            return result
        step = _tree_step_for(self, scheduler_output)
        if step is not None:
            # After the slot mapping is computed: nodes keep sequential slots.
            step.set_positions(self.positions,
                               self.mrope_positions.gpu if self.uses_mrope else None)
        self._vispec_tree_step = step
        _set_active(step, self.compilation_config.static_forward_context)
        return result
    return _prepare_inputs


def _wrap_attention_forward(backend: str):
    def make_wrapper(original):
        def forward(self, layer, query, key, value, kv_cache, attn_metadata, output,
                    *args, **kwargs):
            out = original(self, layer, query, key, value, kv_cache, attn_metadata, output,
                           *args, **kwargs)
            step = _ACTIVE["step"]
            # FlashInfer's impl is decoder-only and keeps no attn_type.
            if step is not None and attn_metadata is not None \
                    and getattr(self, "attn_type", "decoder") == "decoder" \
                    and _in_active_step(layer):
                why = unsupported_tree_attention(self)
                output_scale = args[0] if args else kwargs.get("output_scale")
                if why is None and output_scale is not None:
                    why = "a quantized attention output (attention + quant fusion)"
                if why is not None:  # refused at start-up; a layer changed since
                    raise NotImplementedError(
                        f"vispec tree verification supports plain causal attention over "
                        f"an unquantized KV cache, not {why}")
                step.attend(query, key, value, kv_cache, backend, getattr(layer, "isa", None),
                            self.scale, output)
            return out
        return forward
    return make_wrapper


def _wrap_batch_execution(original):
    """Tree steps never replay a FULL CUDA graph: a replay skips the Python of the
    tree-attention patch (and FlashAttention 3 reports full-graph support, so uniform
    verify batches would replay one). PIECEWISE graphs run attention eagerly."""
    def _determine_batch_execution_and_padding(self, *args, **kwargs):
        step = _ACTIVE["step"]
        if step is None or getattr(self, "_vispec_tree_step", None) is not step \
                or "dispatch" in vars(self.cudagraph_dispatcher):  # (narrowed already)
            return original(self, *args, **kwargs)
        dispatcher = self.cudagraph_dispatcher
        from vllm.config import CUDAGraphMode
        dispatch = dispatcher.dispatch

        def dispatch_without_full(*a, invalid_modes=None, **kw):
            invalid = set(invalid_modes or ()) | {CUDAGraphMode.FULL}
            return dispatch(*a, invalid_modes=invalid, **kw)
        dispatcher.dispatch = dispatch_without_full  # this call only
        try:
            return original(self, *args, **kwargs)
        finally:
            del dispatcher.dispatch
    return _determine_batch_execution_and_padding


def _wrap_sample(original):
    def _sample(self, logits, spec_decode_metadata):
        if not is_vispec_runner(self):
            return original(self, logits, spec_decode_metadata)
        step = getattr(self, "_vispec_tree_step", None)
        _set_active(None, {})
        if step is None or spec_decode_metadata is None:
            return original(self, logits, spec_decode_metadata)
        from vllm.v1.outputs import SamplerOutput
        sampled = step.verify(logits, self.input_batch.sampling_metadata,
                              spec_decode_metadata.max_spec_len)
        step.move_kv(self.drafter.target_kv_views(self))
        self.drafter.accepted_step = step
        return SamplerOutput(sampled_token_ids=sampled, logprobs_tensors=None)
    return _sample


RUNNER = "vllm.v1.worker.gpu_model_runner:GPUModelRunner"
PATCHES = (
    Patch(
        name="tree_positions",
        target=f"{RUNNER}._prepare_inputs",
        what="In a step that verifies vispec trees: gives each node the position root + "
             "depth (M-RoPE too) and marks the step for the two patches below.",
        why="vLLM 0.32 schedules speculative tokens as a chain (sequential positions) and "
            "removed tree attention.",
        remove_when="vLLM verifies speculative trees again.",
        upstream=UPSTREAM,
        make_wrapper=_wrap_prepare_inputs,
    ),
    *(Patch(
        name=f"tree_attention_{name}",
        target=f"vllm.v1.attention.backends.{module}.forward",
        platform=platform,  # trees are refused on other backends (target_kv)
        optional=platform == "cuda",  # FlashInfer's module needs the flashinfer package
        what="After the backend's causal attention, recomputes the rows of branching "
             "trees with tree attention (the cached context read through the backend's "
             "own cache split + the node's own path), as the Triton tree kernel on CUDA.",
        why="vLLM's attention backends take no custom masks.",
        remove_when="vLLM verifies speculative trees again.",
        upstream=UPSTREAM,
        make_wrapper=_wrap_attention_forward(backend),
    ) for name, module, backend, platform in (
        ("cpu", "cpu_attn:CPUAttentionBackendImpl", "CPU_ATTN", "cpu"),
        ("flash_attn", "flash_attn:FlashAttentionImpl", "FLASH_ATTN", "cuda"),
        ("flashinfer", "flashinfer:FlashInferImpl", "FLASHINFER", "cuda"),
        ("triton_attn", "triton_attn:TritonAttentionImpl", "TRITON_ATTN", "cuda"))),
    Patch(
        name="tree_steps_outside_full_graphs",
        target=f"{RUNNER}._determine_batch_execution_and_padding",
        what="In a step that verifies vispec trees: the CUDA-graph dispatcher may not pick "
             "a FULL graph (PIECEWISE or eager instead; under data parallelism vLLM takes "
             "the lowest mode across ranks).",
        why="A FULL graph replay skips the tree-attention patch's Python.",
        remove_when="vLLM verifies speculative trees again.",
        upstream=UPSTREAM,
        make_wrapper=_wrap_batch_execution,
    ),
    Patch(
        name="tree_sampler",
        target=f"{RUNNER}._sample",
        what="In a tree step: verifies each tree (greedy or sampled, lossless) instead of "
             "the chain rejection sampler, then moves the accepted nodes' target K/V to "
             "the slots after the root.",
        why="vLLM's rejection sampler compares draft j with the target at j - 1 (a chain).",
        remove_when="vLLM verifies speculative trees again.",
        upstream=UPSTREAM,
        make_wrapper=_wrap_sample,
    ),
)
