"""Patch: run vispec drafts on vLLM's classic (V1) model runner; refuse vispec where other
settings force Model Runner V2."""

from __future__ import annotations

from .engine_scope import uses_vispec_draft  # noqa: F401  (imported from here by others)
from .registry import Patch

FEATURE = "speculative method 'vispec'"


def v2_forced_by(vllm_config) -> str | None:
    """The setting that makes vLLM 0.32 use Model Runner V2 whatever its unsupported-
    feature list says (``VllmConfig.use_v2_model_runner`` returns True before reading it),
    or None."""
    from vllm import envs
    attention = getattr(vllm_config, "attention_config", None)
    if getattr(attention, "hisparse_config", None) is not None:
        return "HiSparse (attention_config.hisparse_config)"
    if getattr(vllm_config, "watermark_config", None) is not None:
        return "watermarking (watermark_config)"
    if envs.VLLM_USE_V2_MODEL_RUNNER is True:
        return "VLLM_USE_V2_MODEL_RUNNER=1"
    return None


def check_not_forced_onto_v2(vllm_config) -> None:
    forced = v2_forced_by(vllm_config)
    if forced is not None:
        raise ValueError(
            f"vispec runs on vLLM's classic (V1) model runner only, but {forced} requires "
            "Model Runner V2, where the vispec draft would get none of its step inputs and "
            "propose from zeros; remove that setting or the vispec speculative config")


def _make_wrapper(original):
    def _get_v2_model_runner_unsupported_features(self):
        unsupported = original(self)
        if uses_vispec_draft(self):
            # vLLM reads this list to fall back to the classic runner, and again (in
            # _validate_v2_model_runner) when V2 was forced: then it is too late to fall
            # back, so the forced case is refused here with its cause.
            check_not_forced_onto_v2(self)
            unsupported.append(FEATURE)
        return unsupported
    return _get_v2_model_runner_unsupported_features


PATCH = Patch(
    name="classic_runner_for_vispec",
    target="vllm.config.vllm:VllmConfig._get_v2_model_runner_unsupported_features",
    what="For vispec engines: lists vispec as a feature Model Runner V2 lacks, so vLLM "
         "falls back to the classic runner and logs why; where HiSparse, watermarking or "
         "VLLM_USE_V2_MODEL_RUNNER=1 force V2, refuses the engine with that cause.",
    why="The vispec draft's per-request image state hooks into the classic runner's "
        "EAGLE proposer; on Model Runner V2 it would run without it.",
    remove_when="vllm-vispec ships its Model Runner V2 speculator.",
    make_wrapper=_make_wrapper,
    upstream="none filed (Model Runner V2 has no hook for a plugin's speculator)",
)
