"""Patch: run vispec drafts on vLLM's classic (V1) model runner."""

from __future__ import annotations

from ..model.hf_config import DRAFT_ARCHITECTURE
from .registry import Patch


def uses_vispec_draft(vllm_config) -> bool:
    spec = vllm_config.speculative_config
    draft = getattr(spec, "draft_model_config", None)
    archs = getattr(getattr(draft, "hf_config", None), "architectures", None) or []
    return DRAFT_ARCHITECTURE in archs


def _make_wrapper(original):
    def _get_v2_model_runner_unsupported_features(self):
        unsupported = original(self)
        if uses_vispec_draft(self):
            unsupported.append("speculative method 'vispec'")
        return unsupported
    return _get_v2_model_runner_unsupported_features


PATCH = Patch(
    name="classic_runner_for_vispec",
    target="vllm.config.vllm:VllmConfig._get_v2_model_runner_unsupported_features",
    what="Lists vispec as a feature Model Runner V2 lacks, so vLLM falls back to the "
         "classic runner and logs why.",
    why="The vispec draft's per-request image state hooks into the classic runner's "
        "EAGLE proposer; on Model Runner V2 it would run without it.",
    remove_when="vllm-vispec ships its Model Runner V2 speculator.",
    make_wrapper=_make_wrapper,
)
