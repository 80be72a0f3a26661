"""The draft config vLLM sees: a Llama-like config naming our draft class.

Published ViSpec ``config.json`` files copy ``architectures``/``model_type`` from the target
(e.g. ``LlavaNextForConditionalGeneration``), which would make vLLM build the wrong model.
:func:`vllm_config_dict` rewrites them into a config for ``EagleVispecForCausalLM`` and
keeps the draft's exact dimensions under the ``vispec`` key.
"""

from __future__ import annotations

from typing import Any

from .layout import DraftDims

DRAFT_ARCHITECTURE = "EagleVispecForCausalLM"


def vllm_config_dict(dims: DraftDims, source: str,
                     drafting: dict[str, Any] | None = None) -> dict[str, Any]:
    """The config vLLM loads the draft with; ``drafting`` (chain length, tree options)
    rides along for the proposer, which vLLM's speculative config has no field for."""
    return {
        "architectures": [DRAFT_ARCHITECTURE],
        "model_type": "llama",
        "hidden_size": dims.hidden_size,
        "num_attention_heads": dims.num_heads,
        "num_key_value_heads": dims.num_kv_heads,
        "head_dim": dims.head_dim,
        "intermediate_size": dims.intermediate_size,
        "vocab_size": dims.vocab_size,
        "num_hidden_layers": 1,
        "rms_norm_eps": dims.rms_norm_eps,
        "max_position_embeddings": dims.max_position_embeddings,
        "rope_parameters": {"rope_type": "default", "rope_theta": dims.rope_theta},
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "vispec": {"dims": dims.to_dict(), "source": source, "drafting": drafting or {}},
    }


def dims_from_hf_config(hf_config: Any) -> DraftDims:
    vispec = getattr(hf_config, "vispec", None)
    if not isinstance(vispec, dict) or "dims" not in vispec:
        raise ValueError(
            f"{DRAFT_ARCHITECTURE} needs a draft prepared by vllm-vispec; use "
            '"method": "vispec" in the speculative config instead of naming the '
            "architecture directly")
    return DraftDims(**vispec["dims"])


def drafting_from_hf_config(hf_config: Any) -> dict[str, Any]:
    return dict(getattr(hf_config, "vispec", {}).get("drafting", {}))
