"""Writing a trained draft: ViSpec in the published checkpoint layout (loadable by the
plugin), the text-only baseline as vLLM's own EAGLE-1 checkpoint."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from safetensors.torch import load_file, save_file

from ..model.layout import DraftDims, check_shapes, dims_from_config, published_config
from .draft import TrainableDraft


def export_draft(model: TrainableDraft, target_config: dict, out: Path) -> Path:
    state = model.published_state_dict()
    check_shapes({k: tuple(v.shape) for k, v in state.items()}, model.dims, where=str(out))
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(published_config(model.dims, target_config),
                                                indent=2))
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})
    return out


def eagle_config(dims: DraftDims, target_config: dict) -> dict:
    """A Llama config that vLLM's ``"method": "eagle"`` reads as an EAGLE-1 draft."""
    text = target_config.get("text_config", target_config)
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": dims.hidden_size, "num_attention_heads": dims.num_heads,
        "num_key_value_heads": dims.num_kv_heads, "head_dim": dims.head_dim,
        "intermediate_size": dims.intermediate_size, "vocab_size": dims.vocab_size,
        "num_hidden_layers": 1, "rms_norm_eps": dims.rms_norm_eps,
        "rope_theta": dims.rope_theta, "max_position_embeddings": dims.max_position_embeddings,
        "hidden_act": "silu", "attention_bias": dims.qkv_bias, "tie_word_embeddings": False,
        "bos_token_id": text.get("bos_token_id"), "eos_token_id": text.get("eos_token_id"),
        "torch_dtype": "float32",
    }


def export_eagle_draft(model: TrainableDraft, target_config: dict, out: Path) -> Path:
    """A text-only draft as vLLM's own EAGLE-1 checkpoint (``fc`` without bias, one layer
    without input norm, the target's lm_head shared)."""
    if not model.text_only or model.dims.fc_bias:
        raise ValueError("only a text-only draft without fc bias exports as an EAGLE draft")
    state = model.published_state_dict()
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(eagle_config(model.dims, target_config),
                                                indent=2))
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})
    return out


def read_eagle_draft(path: Path, num_q: int = 2) -> tuple[DraftDims, dict]:
    """Dims and weights of an EAGLE draft written by :func:`export_eagle_draft`."""
    cfg = json.loads((path / "config.json").read_text())
    dims = replace(dims_from_config(cfg, num_q), fc_bias=False,
                   qkv_bias=bool(cfg.get("attention_bias", False)))
    return dims, load_file(path / "model.safetensors")
