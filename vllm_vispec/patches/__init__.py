"""All patches of vLLM internals, in one registry (see registry.Patch for the fields).

| patch | target | remove when |
|---|---|---|
| speculative_method_vispec | EngineArgs.create_speculative_config | vLLM can register a speculative method |
| classic_runner_for_vispec | VllmConfig._get_v2_model_runner_unsupported_features | our Model Runner V2 speculator exists |
| vispec_proposer | EagleProposer.__new__ | vLLM lets a plugin provide the proposer of a method |
| tree_positions | GPUModelRunner._prepare_inputs | vLLM verifies speculative trees again |
| tree_attention_cpu | CPUAttentionBackendImpl.forward | vLLM verifies speculative trees again |
| tree_sampler | GPUModelRunner._sample | vLLM verifies speculative trees again |
| cpu_expand_batch_to_tokens | rejection_sampler.expand_batch_to_tokens | vLLM-CPU's expand kernel writes back non-int64 tensors |
"""

from __future__ import annotations

from . import (cpu_sampling, proposer_selection, runner_selection, speculative_method,
               tree_verification)
from .registry import Patch

PATCHES: tuple[Patch, ...] = (speculative_method.PATCH, runner_selection.PATCH,
                              proposer_selection.PATCH, *tree_verification.PATCHES,
                              cpu_sampling.PATCH)


def apply_all() -> None:
    for patch in PATCHES:
        patch.apply()
