"""A pure-PyTorch oracle of NeMo Automodel's ViSpec draft (its decoder layer), on top of
the reference of the published draft (vllm_vispec/reference.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vllm_vispec.reference import ReferenceDraft, linear, rms_norm, rope


class AutomodelReference(ReferenceDraft):
    """Automodel's decoder layer, from its EAGLE-1/2 draft: RMSNorm before attention (the
    residual is the un-normed input), and the draft's final RMSNorm on the layer's output,
    which is both the next step's feature and what the lm_head scores."""

    def layer(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        w, d = self.weights, self.dims
        p = "layers.0.self_attn"
        n = x.shape[0]
        hn = rms_norm(x, w["layers.0.input_layernorm.weight"], d.rms_norm_eps)
        q = rope(linear(w, f"{p}.q_proj", hn).view(n, d.num_heads, d.head_dim), positions,
                 d.rope_theta)
        k = rope(linear(w, f"{p}.k_proj", hn).view(n, d.num_kv_heads, d.head_dim), positions,
                 d.rope_theta)
        self.keys.append(k)
        self.values.append(linear(w, f"{p}.v_proj", hn).view(n, d.num_kv_heads, d.head_dim))
        repeat = d.num_heads // d.num_kv_heads
        keys = torch.cat(self.keys).repeat_interleave(repeat, dim=1)
        values = torch.cat(self.values).repeat_interleave(repeat, dim=1)
        total = keys.shape[0]
        scores = torch.einsum("qhd,khd->hqk", q, keys) * d.head_dim ** -0.5
        visible = (torch.arange(total)[None, :] <= (total - n + torch.arange(n))[:, None])
        scores = scores.masked_fill(~visible[None], float("-inf"))
        attn = torch.einsum("hqk,khd->qhd", scores.softmax(-1), values).reshape(n, -1)
        r = linear(w, f"{p}.o_proj", attn) + x
        hn = rms_norm(r, w["layers.0.post_attention_layernorm.weight"], d.rms_norm_eps)
        out = linear(w, "layers.0.mlp.down_proj",
                     F.silu(linear(w, "layers.0.mlp.gate_proj", hn))
                     * linear(w, "layers.0.mlp.up_proj", hn)) + r
        return rms_norm(out, w["norm.weight"], d.rms_norm_eps)


def reference_for(weights, dims, lm_head, embed) -> ReferenceDraft:
    """The oracle of the draft's architecture: Automodel's (both norms) or the published."""
    if dims.input_norm != dims.final_norm:
        raise ValueError("no oracle for a draft with one of Automodel's two norms only")
    cls = AutomodelReference if dims.input_norm else ReferenceDraft
    return cls(weights, dims, lm_head, embed)
