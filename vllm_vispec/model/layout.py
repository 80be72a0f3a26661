"""The published ViSpec draft checkpoint layout: key names, shapes and config fields.

The released checkpoints (``JLKang/ViSpec-*``) are a ``config.json`` that is Llama-like
(its ``architectures``/``model_type`` keys are copied from the target and mean nothing for
the draft) plus ``model.safetensors`` or ``pytorch_model.bin`` with un-prefixed keys.
This module is the single source of truth for that layout: the loader checks against it
and the fixtures write it. Its key names are also the names the draft model loads by;
other layouts (automodel_layout.py) are renamed onto them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class DraftDims:
    """Everything that fixes the shape of a ViSpec draft checkpoint."""

    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    num_q: int
    qkv_bias: bool
    fc_bias: bool
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    # Off in the published drafts (EAGLE-1's layer); NeMo Automodel's drafts have them.
    input_norm: bool = False  # RMSNorm before layer 0's attention
    final_norm: bool = False  # RMSNorm on the layer's output (feature and logits alike)
    o_proj_bias: bool = False
    mlp_bias: bool = False

    @property
    def adaptor_head_dim(self) -> int:
        """The image adaptor's head size: ``hidden / heads`` (not ``head_dim``, which only
        the decoder layer's attention uses)."""
        return self.hidden_size // self.num_heads

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def dims_from_config(cfg: dict[str, Any], num_q: int) -> DraftDims:
    """Reads the draft dimensions from a published-style ``config.json`` dict."""
    missing = [k for k in ("hidden_size", "num_attention_heads", "intermediate_size",
                           "vocab_size") if k not in cfg]
    if missing:
        raise ValueError(f"ViSpec draft config.json lacks required keys: {missing}")
    hidden = int(cfg["hidden_size"])
    heads = int(cfg["num_attention_heads"])
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    rope_theta = cfg.get("rope_theta", rope.get("rope_theta", 10000.0))
    return DraftDims(
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
        head_dim=int(cfg.get("head_dim") or hidden // heads),
        intermediate_size=int(cfg["intermediate_size"]),
        vocab_size=int(cfg["vocab_size"]),
        num_q=num_q,
        qkv_bias=bool(cfg.get("qkv_bias", False)),
        # ViSpec's `bias` key toggles the fc/img_fc bias and defaults to on.
        fc_bias=bool(cfg.get("bias", True)),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_theta=float(rope_theta if rope_theta is not None else 10000.0),
        max_position_embeddings=int(cfg.get("max_position_embeddings", 4096)),
    )


def expected_shapes(d: DraftDims) -> dict[str, tuple[int, ...]]:
    """Every tensor of a ViSpec draft checkpoint in the published names, with its shape
    (a published draft never has the norms or the o_proj/MLP biases)."""
    h, q_out, kv_out = d.hidden_size, d.num_heads * d.head_dim, d.num_kv_heads * d.head_dim
    shapes: dict[str, tuple[int, ...]] = {
        "embed_tokens.weight": (d.vocab_size, h),
        "layers.0.self_attn.q_proj.weight": (q_out, h),
        "layers.0.self_attn.k_proj.weight": (kv_out, h),
        "layers.0.self_attn.v_proj.weight": (kv_out, h),
        "layers.0.self_attn.o_proj.weight": (h, q_out),
        "layers.0.mlp.gate_proj.weight": (d.intermediate_size, h),
        "layers.0.mlp.up_proj.weight": (d.intermediate_size, h),
        "layers.0.mlp.down_proj.weight": (h, d.intermediate_size),
        "layers.0.post_attention_layernorm.weight": (h,),
        "fc.weight": (h, 2 * h),
        "img_fc.weight": (h, 2 * h),
        "imadpt.q": (d.num_q, d.num_heads, d.adaptor_head_dim),
        "imadpt.k_proj.weight": (h, h),
        "imadpt.v_proj.weight": (h, h),
        "imadpt.o_proj.weight": (h, h),
    }
    if d.qkv_bias:
        shapes["layers.0.self_attn.q_proj.bias"] = (q_out,)
        shapes["layers.0.self_attn.k_proj.bias"] = (kv_out,)
        shapes["layers.0.self_attn.v_proj.bias"] = (kv_out,)
        shapes["imadpt.k_proj.bias"] = (h,)
        shapes["imadpt.v_proj.bias"] = (h,)
    if d.fc_bias:
        shapes["fc.bias"] = (h,)
        shapes["img_fc.bias"] = (h,)
    if d.input_norm:
        shapes["layers.0.input_layernorm.weight"] = (h,)
    if d.final_norm:
        shapes["norm.weight"] = (h,)
    if d.o_proj_bias:
        shapes["layers.0.self_attn.o_proj.bias"] = (h,)
    if d.mlp_bias:
        shapes["layers.0.mlp.gate_proj.bias"] = (d.intermediate_size,)
        shapes["layers.0.mlp.up_proj.bias"] = (d.intermediate_size,)
        shapes["layers.0.mlp.down_proj.bias"] = (h,)
    return shapes


def some_keys(keys: list[str], shown: int = 6) -> str:
    """A few keys, then how many more: a whole 7B layout would drown the message."""
    more = len(keys) - shown
    return str(keys[:shown]) + (f" and {more} more" if more > 0 else "")


def dims_summary(d: DraftDims) -> str:
    extras = [name for name in ("input_norm", "final_norm", "o_proj_bias", "mlp_bias")
              if getattr(d, name)]
    return (f"hidden {d.hidden_size}, {d.num_heads} heads, {d.num_kv_heads} KV heads, "
            f"num_q {d.num_q}, qkv_bias {d.qkv_bias}, fc bias {d.fc_bias}"
            + "".join(f", {e}" for e in extras))


def check_named_shapes(found: dict[str, tuple[int, ...]], want: dict[str, tuple[int, ...]],
                       where: str, layout: str, summary: str) -> None:
    """Raises one error naming the missing, unexpected and mis-shaped keys (a few of
    each, then a count)."""
    missing = sorted(set(want) - set(found))
    unexpected = sorted(set(found) - set(want))
    misshaped = sorted(
        f"{k}: checkpoint {tuple(found[k])}, expected {want[k]}"
        for k in set(want) & set(found)
        if tuple(found[k]) != want[k]
    )
    problems = []
    if missing:
        problems.append(f"missing keys: {some_keys(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {some_keys(unexpected)}")
    if misshaped:
        problems.append(f"shape mismatches: {some_keys(misshaped)}")
    if problems:
        raise ValueError(
            f"ViSpec draft checkpoint {where} does not match the {layout} ({summary}): "
            + "; ".join(problems))


def check_shapes(found: dict[str, tuple[int, ...]], d: DraftDims, where: str) -> None:
    """Strict check of tensors in the published names against ``d``."""
    check_named_shapes(found, expected_shapes(d), where, "published layout", dims_summary(d))


def published_config(dims: DraftDims, target_cfg: dict) -> dict:
    """A config.json as the released drafts have it: Llama-like, with the target's
    ``architectures``/``model_type`` copied in (vllm-vispec ignores both)."""
    return {
        "architectures": target_cfg.get("architectures"),
        "model_type": target_cfg.get("model_type"),
        "hidden_size": dims.hidden_size,
        "num_attention_heads": dims.num_heads,
        "num_key_value_heads": dims.num_kv_heads,
        # Written only where heads x head_dim is not the width (Qwen3-VL-4B-like shapes).
        **({"head_dim": dims.head_dim}
           if dims.head_dim * dims.num_heads != dims.hidden_size else {}),
        "intermediate_size": dims.intermediate_size,
        "vocab_size": dims.vocab_size,
        "num_hidden_layers": 1,
        "rms_norm_eps": dims.rms_norm_eps,
        "rope_theta": dims.rope_theta,
        "rope_scaling": None,
        "max_position_embeddings": dims.max_position_embeddings,
        "hidden_act": "silu",
        "qkv_bias": dims.qkv_bias,
        "bias": dims.fc_bias,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
    }
