"""NVIDIA NeMo Automodel's ViSpec draft checkpoints: key names, config fields, variants.

NeMo Automodel trains ViSpec drafts (its ``VispecDraftModel``, an EAGLE-1/2 draft plus the
image adaptor and ``img_fc``) and exports them as a Hugging Face folder: ``config.json``
(the target's text config with the draft's fields set on it) and safetensors shards
(``model-0000i-of-0000n.safetensors`` with ``model.safetensors.index.json``). Against the
published checkpoints (layout.py) the tensors differ in names and in what exists:

* the adaptor is ``img_adaptor.query`` / ``img_adaptor.{k,v,o}_proj`` where the published
  drafts have ``imadpt.q`` / ``imadpt.{k,v,o}_proj`` (same shapes, same computation);
* layer 0 keeps its input RMSNorm and the draft ends with a final RMSNorm (``norm``), whose
  output is both the feature the next draft step takes and what the target's lm_head
  scores, unless ``draft_skip_first_input_norm`` / ``draft_apply_final_norm: false`` pin
  the released architecture (as Automodel's converter of the published drafts does);
* ``fc`` and ``img_fc`` have biases only with ``fc_bias`` (absent: no bias, folded as zero);
  q/k/v with ``qkv_bias`` or ``attention_bias``, ``o_proj`` with ``attention_bias``, the MLP
  with ``mlp_bias``; the adaptor's k/v follow q/k/v and its o_proj never has one;
* ``num_key_value_heads`` and ``head_dim`` are the config's (the decoder layer may be GQA);
  the adaptor's head size stays ``hidden / heads``;
* ``draft_num_hidden_layers`` (falling back to ``num_hidden_layers``, the target's) layers;
  RoPE from ``rope_parameters`` or ``rope_theta``/``rope_scaling``, over 1-D positions.

Whatever vllm-vispec cannot serve faithfully (more than one layer, a RoPE other than the
default one, partial rotary) is refused with the field that says so.
"""

from __future__ import annotations

from typing import Any

from .layout import DraftDims

ARCHITECTURE = "VispecDraftModel"
PUBLISHED_QUERY, QUERY = "imadpt.q", "img_adaptor.query"
PUBLISHED_ADAPTOR, ADAPTOR = "imadpt.", "img_adaptor."


def to_published_name(name: str) -> str:
    if name == QUERY:
        return PUBLISHED_QUERY
    if name.startswith(ADAPTOR):
        return PUBLISHED_ADAPTOR + name[len(ADAPTOR):]
    return name


def from_published_name(name: str) -> str:
    if name == PUBLISHED_QUERY:
        return QUERY
    if name.startswith(PUBLISHED_ADAPTOR):
        return ADAPTOR + name[len(PUBLISHED_ADAPTOR):]
    return name


def _refuse(problem: str) -> ValueError:
    return ValueError(f"NeMo Automodel ViSpec draft config.json: {problem}")


def _rope(cfg: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """(theta, scaling) read the way Automodel's rotary embedding reads them: a non-empty
    ``rope_parameters`` wins over ``rope_theta``/``rope_scaling``."""
    params = cfg.get("rope_parameters")
    if params:
        return float(params.get("rope_theta", 10000.0)), params
    return float(cfg.get("rope_theta", 10000.0)), cfg.get("rope_scaling") or {}


def dims_from_automodel_config(cfg: dict[str, Any], num_q: int) -> DraftDims:
    """The draft's dimensions and variant from an Automodel export's ``config.json``;
    ``num_q`` is the number of rows of ``img_adaptor.query``."""
    missing = [k for k in ("hidden_size", "num_attention_heads", "intermediate_size",
                           "vocab_size") if k not in cfg]
    if missing:
        raise _refuse(f"lacks required keys: {missing}")
    hidden, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    if "draft_num_hidden_layers" in cfg:
        layers, field = int(cfg["draft_num_hidden_layers"]), "draft_num_hidden_layers"
    else:  # Automodel falls back to the target's layer count
        layers, field = int(cfg.get("num_hidden_layers", 1)), "num_hidden_layers"
    if max(1, layers) != 1:
        raise _refuse(f"{field} = {layers}: vllm-vispec serves one-layer ViSpec drafts "
                      "(as published); train with draft_num_hidden_layers: 1")
    declared = cfg.get("vispec_num_query_tokens")
    if declared is not None and int(declared) != num_q:
        raise _refuse(f"vispec_num_query_tokens = {declared}, but img_adaptor.query has "
                      f"{num_q} queries")
    if hidden % heads:
        raise _refuse(f"hidden_size {hidden} is not a multiple of num_attention_heads "
                      f"{heads}, which the image adaptor splits it into")
    theta, scaling = _rope(cfg)
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type != "default":
        raise _refuse(f"RoPE type {rope_type!r}: vllm-vispec's draft applies the default "
                      "RoPE only")
    if float(cfg.get("partial_rotary_factor", 1.0)) != 1.0:
        raise _refuse(f"partial_rotary_factor = {cfg['partial_rotary_factor']}: the draft "
                      "rotates whole heads only")
    attention_bias = bool(cfg.get("attention_bias", False))
    return DraftDims(
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
        head_dim=int(cfg.get("head_dim") or hidden // heads),
        intermediate_size=int(cfg["intermediate_size"]),
        vocab_size=int(cfg["vocab_size"]),
        num_q=num_q,
        qkv_bias=attention_bias or bool(cfg.get("qkv_bias", False)),
        fc_bias=bool(cfg.get("fc_bias", False)),  # Automodel's default: no bias
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        max_position_embeddings=int(cfg.get("max_position_embeddings", 4096)),
        input_norm=not bool(cfg.get("draft_skip_first_input_norm", False)),
        final_norm=bool(cfg.get("draft_apply_final_norm", True)),
        o_proj_bias=attention_bias,
        mlp_bias=bool(cfg.get("mlp_bias", False)),
    )


def automodel_config(dims: DraftDims, target_text_cfg: dict[str, Any]) -> dict[str, Any]:
    """A config.json as Automodel's export writes it: the target's text config with the
    draft's fields set (its ``num_hidden_layers`` stays the target's)."""
    cfg = dict(target_text_cfg)
    cfg.pop("rope_scaling", None)
    cfg.update({
        "architectures": [ARCHITECTURE],
        "hidden_size": dims.hidden_size,
        "num_attention_heads": dims.num_heads,
        "num_key_value_heads": dims.num_kv_heads,
        "head_dim": dims.head_dim,
        "intermediate_size": dims.intermediate_size,
        "vocab_size": dims.vocab_size,
        "rms_norm_eps": dims.rms_norm_eps,
        # The target's, M-RoPE sections included (the draft's default RoPE ignores them).
        "rope_parameters": {**(target_text_cfg.get("rope_parameters") or {}),
                            "rope_type": "default", "rope_theta": dims.rope_theta},
        "max_position_embeddings": dims.max_position_embeddings,
        "draft_num_hidden_layers": 1,
        "vispec_num_query_tokens": dims.num_q,
        "qkv_bias": dims.qkv_bias,
        "attention_bias": dims.o_proj_bias,
        "mlp_bias": dims.mlp_bias,
        "fc_bias": dims.fc_bias,
    })
    if not dims.input_norm:
        cfg["draft_skip_first_input_norm"] = True
    if not dims.final_norm:
        cfg["draft_apply_final_norm"] = False
    return cfg
