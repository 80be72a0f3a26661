"""Tiny ViSpec drafts written in the published checkpoint layout (key names, config.json)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..model.layout import DraftDims, expected_shapes, published_config
from ..train.draft_dims import draft_dims_for_target
from .targets import RESIDUAL_SCALE


def draft_weights(dims: DraftDims, target_embed: torch.Tensor, seed: int,
                  identity_fc: bool = True) -> dict[str, torch.Tensor]:
    """Weights in the published layout.

    With ``identity_fc`` the fc passes the token embedding through (plus a little noise)
    and the layer adds little, so the draft proposes the target's preferred successor of
    each token and gets a share of its tokens accepted. ``img_fc`` starts as ViSpec
    initialises it: ``[I | 0]`` with zero bias.
    """
    gen = torch.Generator().manual_seed(seed)
    h = dims.hidden_size
    out = {}
    for key, shape in expected_shapes(dims).items():
        out[key] = torch.randn(shape, generator=gen) * 0.02
    out["embed_tokens.weight"] = target_embed.clone().float()
    out["layers.0.post_attention_layernorm.weight"] = torch.ones(h)
    out["imadpt.q"] = torch.randn(out["imadpt.q"].shape, generator=gen) * dims.head_dim ** -0.5
    for key in ("layers.0.self_attn.o_proj.weight", "layers.0.mlp.down_proj.weight"):
        out[key] *= RESIDUAL_SCALE
    eye_zero = torch.cat((torch.eye(h), torch.zeros(h, h)), dim=1)
    out["img_fc.weight"] = eye_zero.clone()
    if identity_fc:
        out["fc.weight"] = eye_zero + torch.randn(h, 2 * h, generator=gen) * 0.007
    if dims.fc_bias:
        out["fc.bias"] = torch.zeros(h)
        out["img_fc.bias"] = torch.zeros(h)
    return out


def build_tiny_draft(target: Path, out: Path, seed: int = 0, num_q: int = 2,
                     identity_fc: bool = True) -> None:
    target_cfg = json.loads((target / "config.json").read_text())
    dims = draft_dims_for_target(target_cfg, num_q)
    if target_cfg.get("model_type", "").startswith("qwen3"):
        # The target's GQA and no q/k/v bias, as Automodel's Qwen3-VL drafts had before it
        # pinned ViSpec's released architecture: the tests then serve a GQA draft whose
        # head_dim is not hidden / heads.
        text = target_cfg["text_config"]
        dims = replace(dims, num_kv_heads=text["num_key_value_heads"], qkv_bias=False)
    (embed,) = [v for k, v in load_file(target / "model.safetensors").items()
                if k.endswith("embed_tokens.weight")]
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(published_config(dims, target_cfg), indent=2))
    save_file(draft_weights(dims, embed, seed, identity_fc), out / "model.safetensors",
              metadata={"format": "pt"})
