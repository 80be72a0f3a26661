"""The shape of a fresh ViSpec draft for a target: what ``vispec-train fit`` starts from
without ``--init`` (and what the tiny test drafts are built with)."""

from __future__ import annotations

from ..model.layout import DraftDims


def draft_dims_for_target(target_cfg: dict, num_q: int = 2) -> DraftDims:
    """The dimensions of a fresh ViSpec draft for a target (its HF ``config.json`` dict):
    the target's text width and vocabulary, full multi-head attention even for GQA
    targets, and the biases, norm epsilon and RoPE base ViSpec's drafts use per family.
    The head size is ``hidden / heads`` except where the target sets its own (Qwen3-VL's
    128, over 2560 wide on the 4B): NeMo Automodel's Qwen3-VL drafts keep the target's
    ``head_dim`` and pin the rest to ViSpec's released architecture (full multi-head
    attention, q/k/v and fc biases)."""
    text = target_cfg.get("text_config", target_cfg)
    family = target_cfg.get("model_type", "")
    qwen = family.startswith("qwen")
    heads = text["num_attention_heads"]
    head_dim = text["hidden_size"] // heads
    if family.startswith("qwen3"):
        head_dim = text.get("head_dim") or head_dim
    rope = text.get("rope_parameters") or {}
    return DraftDims(
        hidden_size=text["hidden_size"], num_heads=heads, num_kv_heads=heads,
        head_dim=head_dim, intermediate_size=text["intermediate_size"],
        vocab_size=text["vocab_size"], num_q=num_q, qkv_bias=qwen, fc_bias=True,
        rms_norm_eps=1e-6 if qwen else 1e-5,
        rope_theta=float(rope.get("rope_theta") or text.get("rope_theta")
                         or (1e6 if qwen else 1e4)),
        # At least the target's context: vLLM sizes the draft's RoPE table from it.
        max_position_embeddings=max(2048, int(text.get("max_position_embeddings", 0))),
    )
