"""All patches of vLLM internals, in one registry (see registry.Patch for the fields).

Every wrapper is a pass-through in engines that do not use vispec (engine_scope); a
platform-specific patch is applied on its platform only; on an unsupported vLLM only the
version guard is applied (see plugin.register).

| patch | target | platform | upstream | remove when |
|---|---|---|---|---|
| speculative_method_vispec | EngineArgs.create_speculative_config | all | none filed (RFC vllm-project/vllm#36219) | vLLM can register a speculative method |
| classic_runner_for_vispec | VllmConfig._get_v2_model_runner_unsupported_features | all | none filed | our Model Runner V2 speculator exists |
| vispec_proposer | EagleProposer.__new__ | all | vllm-project/vllm#36219 | vLLM lets a plugin provide the proposer of a method |
| tree_positions | GPUModelRunner._prepare_inputs | all | vllm-project/vllm#42121 | vLLM verifies speculative trees again |
| tree_attention_cpu | CPUAttentionBackendImpl.forward | cpu | vllm-project/vllm#42121 | vLLM verifies speculative trees again |
| tree_attention_flash_attn / _flashinfer / _triton_attn | FlashAttentionImpl / FlashInferImpl / TritonAttentionImpl .forward | cuda (FlashInfer's only where its package imports) | vllm-project/vllm#42121 | vLLM verifies speculative trees again |
| tree_steps_outside_full_graphs | GPUModelRunner._determine_batch_execution_and_padding | all | vllm-project/vllm#42121 | vLLM verifies speculative trees again |
| tree_sampler | GPUModelRunner._sample | all | vllm-project/vllm#42121 | vLLM verifies speculative trees again |
| zero_draft_sampling | GPUModelRunner._sample (around tree_sampler) | all | none filed (vllm-project/vllm-gaudi#593) | vLLM's runner skips rejection sampling without drafts |
| vispec_sampling_scope | GPUModelRunner._sample (around zero_draft_sampling) | cpu | vllm-project/vllm#55005 | cpu_expand_batch_to_tokens goes |
| cpu_expand_batch_to_tokens | rejection_sampler.expand_batch_to_tokens | cpu | vllm-project/vllm#55005, fix #55006 | vLLM-CPU's expand kernel writes back non-int64 tensors |
| mm_cache_delivery_order | renderers.base.processor_cache_from_config | all | vllm-project/vllm#46747 (recovers, does not prevent) | vLLM orders its multimodal shadow cache by delivery |
| mm_cache_mark_sent_async / _sync / _inproc | AsyncMPClient._send_input, SyncMPClient._send_input, InprocClient.add_request | all | as above | as above |
| encoder_lookahead_progress | Scheduler._try_schedule_encoder_inputs | all | none filed (vllm-project/vllm-ascend#17195) | vLLM's EAGLE look-ahead cannot schedule 0 tokens for ever |
| vispec_mixed_media | InputProcessor._validate_model_inputs | all | none (a ViSpec scope limit) | ViSpec drafts cover prompts mixing images and videos |
| vispec_version_guard (unsupported vLLM only) | EngineArgs.create_speculative_config | all | none filed | vLLM can register a speculative method |
"""

from __future__ import annotations

from . import (cpu_sampling, encoder_budget, media_mix, mm_cache_delivery,
               proposer_selection, runner_selection, speculative_method, tree_verification,
               zero_draft_sampling)
from .registry import Patch

PATCHES: tuple[Patch, ...] = (speculative_method.PATCH, runner_selection.PATCH,
                              proposer_selection.PATCH, *tree_verification.PATCHES,
                              zero_draft_sampling.PATCH, *cpu_sampling.PATCHES,
                              *mm_cache_delivery.PATCHES, encoder_budget.PATCH,
                              media_mix.PATCH)


def apply_all() -> None:
    """Applies every patch that applies on this platform (in order: a patch that wraps
    another comes after it)."""
    for patch in PATCHES:
        if not patch.applies_here():
            continue
        try:
            patch.apply()
        except ImportError:
            if not patch.optional:
                raise


def apply_version_guard(reason: str) -> None:
    """On an unsupported vLLM: only the guard that refuses a vispec request with
    ``reason``."""
    speculative_method.make_version_guard(reason).apply()
