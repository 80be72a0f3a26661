"""The ``"method": "vispec"`` speculative config: parsing, validation, clear errors.

vLLM's ``SpeculativeConfig.method`` is a closed Literal, so a vispec config is rewritten
into an EAGLE config for the prepared draft (:func:`to_eagle_config`). Everything the user
can get wrong is checked here, before vLLM sees it, so errors name the problem.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from .model.checkpoint import prepare_draft
from .tree.options import SCHEDULE, TreeOptions, refuse_thresholds_with_schedule

METHOD = "vispec"
# Options of ours, beyond vLLM's speculative config fields.
VISPEC_FIELDS = {"tree"}

# vLLM's own fields that a user may not set with vispec, and why.
UNSUPPORTED_FIELDS = {
    "parallel_drafting": "ViSpec drafts token by token (EAGLE-1 style)",
}
# Fields vLLM fills in itself; they never come from a user.
INTERNAL_FIELDS = {"target_model_config", "target_parallel_config", "draft_model_config",
                   "draft_parallel_config"}


def speculative_config_fields() -> set[str]:
    from vllm.config import SpeculativeConfig
    return {f.name for f in dataclasses.fields(SpeculativeConfig)} - INTERNAL_FIELDS


def is_vispec(spec: dict[str, Any] | None) -> bool:
    return isinstance(spec, dict) and spec.get("method") == METHOD


def validate_options(spec: dict[str, Any]) -> None:
    allowed = speculative_config_fields() | VISPEC_FIELDS
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise ValueError(
            f"unknown vispec option(s) {unknown} in the speculative config; valid options "
            f"are vLLM's speculative config fields: {sorted(allowed)}")
    for name, why in UNSUPPORTED_FIELDS.items():
        if spec.get(name):
            raise ValueError(f"vispec does not support {name!r}: {why}")
    n = spec.get("num_speculative_tokens")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(
            '"method": "vispec" needs "num_speculative_tokens", a positive integer '
            f"(got {n!r})")
    schedule = spec.get(SCHEDULE)
    if schedule is not None:
        check_schedule(schedule)
    if "tree" in spec:
        TreeOptions.parse(spec["tree"])
        refuse_thresholds_with_schedule(spec["tree"], schedule)
        check_tree_platform()


def check_schedule(schedule: Any) -> None:
    """vLLM's dynamic speculation schedule, checked by vLLM's own rules: vLLM checks it
    only when its scheduler starts, deep inside the engine's start-up."""
    from vllm.v1.spec_decode.dynamic.utils import validate_and_normalize_dynamic_sd_schedule
    try:
        validate_and_normalize_dynamic_sd_schedule(schedule)
    except (TypeError, ValueError) as e:
        raise ValueError(f'vispec: "{SCHEDULE}" {schedule!r}: {e}') from e


def check_tree_platform() -> None:
    """Trees are verified by patches of vLLM's CPU attention backend and of the CUDA
    backends FlashAttention, FlashInfer and Triton attention (the target's layers are
    checked at start-up, tree/target_kv.py); on any other platform their rows would be
    attended causally, and the output would change."""
    from vllm.platforms import current_platform
    if not (current_platform.is_cpu() or current_platform.is_cuda()):
        raise ValueError(
            'vispec "tree" is supported on vLLM\'s CPU and CUDA builds only (tree '
            "verification patches their attention backends: CPU_ATTN, FLASH_ATTN, "
            f"FLASHINFER, TRITON_ATTN), not on {current_platform.device_name}; drop "
            '"tree" to draft chains')


def check_parallelism(parallel_config: Any) -> None:
    """Tensor parallelism (and data parallelism, Ray across nodes) is supported; pipeline
    stages are not: the draft needs the target's last hidden states and image embeddings
    on the ranks that run it, which vLLM's EAGLE path hands over within one stage only."""
    stages = getattr(parallel_config, "pipeline_parallel_size", 1)
    if stages > 1:
        raise ValueError(
            f"vispec does not support pipeline parallelism (pipeline_parallel_size={stages}); "
            "use tensor_parallel_size to spread the target over more devices")


def check_model_runner() -> None:
    """The vispec draft runs on vLLM's classic (V1) model runner only, for now."""
    value = os.environ.get("VLLM_USE_V2_MODEL_RUNNER", "").strip().lower()
    if value in ("1", "true"):
        raise ValueError(
            "vispec supports vLLM's classic (V1) model runner only; unset "
            "VLLM_USE_V2_MODEL_RUNNER (vllm-vispec then selects the classic runner)")


def to_eagle_config(spec: dict[str, Any], target_model_config: Any) -> dict[str, Any]:
    """The vLLM speculative config that runs ``spec`` through vLLM's EAGLE pipeline."""
    spec = {k.replace("-", "_"): v for k, v in spec.items()}
    validate_options(spec)
    check_model_runner()
    chain_tokens = spec["num_speculative_tokens"]
    tree = TreeOptions.parse(spec.pop("tree")) if "tree" in spec else None
    drafting = {"chain_tokens": chain_tokens, "tree": tree.as_dict() if tree else None}
    draft = prepare_draft(
        spec.get("model"),
        target_name=str(target_model_config.model),
        target_hidden=target_model_config.get_hidden_size(),
        target_vocab=target_model_config.get_vocab_size(),
        target_max_len=target_model_config.max_model_len,
        drafting=drafting,
    )
    # vLLM sizes its buffers and stats by num_speculative_tokens: with a tree, that is
    # the tree's size (a chain step then drafts fewer).
    num_tokens = max(chain_tokens, tree.num_nodes) if tree else chain_tokens
    return {**spec, "method": "eagle", "model": str(draft),
            "num_speculative_tokens": num_tokens}
