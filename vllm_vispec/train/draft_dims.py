"""The shape of a fresh ViSpec draft for a target: what ``vispec-train fit`` starts from
without ``--init`` (and what the tiny test drafts are built with)."""

from __future__ import annotations

from ..model.layout import DraftDims


def draft_dims_for_target(target_cfg: dict, num_q: int = 2) -> DraftDims:
    """The dimensions of a fresh ViSpec draft for a target (its HF ``config.json`` dict):
    the target's text width and vocabulary, and the attention shape, biases, norm epsilon
    and RoPE base ViSpec's drafts use per family. LLaVA and Qwen2.5-VL drafts (the
    published ones) have full multi-head attention even for GQA targets; Qwen3-VL drafts
    (NeMo Automodel's, there are no published ones) take the target's attention shape:
    its KV heads, its ``head_dim`` and its q/k/v biases (none)."""
    text = target_cfg.get("text_config", target_cfg)
    family = target_cfg.get("model_type", "")
    qwen = family.startswith("qwen")
    heads = text["num_attention_heads"]
    if family.startswith("qwen3"):
        kv_heads = text.get("num_key_value_heads") or heads
        head_dim = text.get("head_dim") or text["hidden_size"] // heads
        qkv_bias = bool(text.get("attention_bias", False))
    else:
        kv_heads, head_dim, qkv_bias = heads, text["hidden_size"] // heads, qwen
    rope = text.get("rope_parameters") or {}
    return DraftDims(
        hidden_size=text["hidden_size"], num_heads=heads, num_kv_heads=kv_heads,
        head_dim=head_dim, intermediate_size=text["intermediate_size"],
        vocab_size=text["vocab_size"], num_q=num_q, qkv_bias=qkv_bias, fc_bias=True,
        rms_norm_eps=1e-6 if qwen else 1e-5,
        rope_theta=float(rope.get("rope_theta") or text.get("rope_theta")
                         or (1e6 if qwen else 1e4)),
        # At least the target's context: vLLM sizes the draft's RoPE table from it.
        max_position_embeddings=max(2048, int(text.get("max_position_embeddings", 0))),
    )
