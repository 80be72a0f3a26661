"""The ViSpec draft as a trainable module, in the published checkpoint layout.

Its forward is the reference draft's (``vllm_vispec.reference``) over whole sequences,
so what is trained is exactly what the plugin's tests hold the vLLM draft to.

``text_only=True`` makes the baseline ViSpec is measured against: an EAGLE-1 draft with the
same layer and the same training, but no image adaptor and no img_fc, fed what vLLM's own
``"method": "eagle"`` feeds a text-only draft of a VLM: every slot kept, the embedding of
the image placeholder token at image slots.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from ..model.layout import DraftDims, expected_shapes
from ..reference import ReferenceDraft
from .target_features import Sample

FROZEN = ("embed_tokens.weight",)  # a copy of the target's embedding, never trained
IMAGE_MODULES = ("imadpt.", "img_fc.")  # stage 1 (text only) leaves these as initialised


def text_only_dims(dims: DraftDims) -> DraftDims:
    """vLLM's EAGLE-1 Llama draft has no fc bias."""
    return replace(dims, fc_bias=False)


def is_image_module(key: str) -> bool:
    return key.startswith(IMAGE_MODULES)


def initial_weights(dims: DraftDims, embed: torch.Tensor, seed: int = 0,
                    text_only: bool = False) -> dict:
    """Fresh weights: small random projections, ``img_fc = [I | 0]`` (ViSpec's start, so
    stage 2 begins exactly where the text-only stage 1 ended)."""
    g = torch.Generator().manual_seed(seed)
    h = dims.hidden_size
    out = {k: torch.randn(shape, generator=g) * 0.02 for k, shape in expected_shapes(dims).items()}
    out["embed_tokens.weight"] = embed.detach().float().clone()
    out["layers.0.post_attention_layernorm.weight"] = torch.ones(h)
    out["imadpt.q"] = torch.randn(out["imadpt.q"].shape, generator=g) * dims.head_dim ** -0.5
    out["img_fc.weight"] = torch.cat((torch.eye(h), torch.zeros(h, h)), dim=1)
    for key in out:
        if key.endswith(".bias"):
            out[key] = torch.zeros_like(out[key])
    if text_only:
        out = {k: v for k, v in out.items() if not is_image_module(k)}
    return out


class TrainableDraft(nn.Module):
    def __init__(self, dims: DraftDims, weights: dict[str, torch.Tensor],
                 lm_head: torch.Tensor) -> None:
        super().__init__()
        self.dims = dims
        self.text_only = "img_fc.weight" not in weights
        self.trainable = nn.ParameterDict({
            _param_name(k): nn.Parameter(v.detach().float().clone())
            for k, v in weights.items() if k not in FROZEN})
        self.register_buffer("embed", weights["embed_tokens.weight"].detach().float().clone())
        self.register_buffer("lm_head", lm_head.detach().float().clone())

    def weights(self) -> dict[str, torch.Tensor]:
        out = {_key(n): p for n, p in self.trainable.items()}
        out["embed_tokens.weight"] = self.embed
        return out

    def published_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone().contiguous() for k, v in self.weights().items()}

    def set_stage(self, stage: int) -> None:
        for name, p in self.trainable.items():
            p.requires_grad_(stage == 2 or not is_image_module(_key(name)))

    def forward(self, sample: Sample, hidden: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced draft over a sample: output per slot ``j`` (predicting the
        target feature of token ``j + 1``), [L - 1, H]."""
        length = len(sample.token_ids)
        hidden = sample.hidden[:length - 1] if hidden is None else hidden
        ref = ReferenceDraft(self.weights(), self.dims, self.lm_head, self.embed)
        if self.text_only:
            embeds = self.embed[torch.tensor(sample.token_ids[:length], device=self.embed.device)]
            return ref.sequence(embeds[:-1], hidden, embeds[-1], [])
        images = [s for s in sample.images if s.end <= length - 1]
        return ref.sequence(sample.embeds[:length - 1], hidden, sample.embeds[length - 1],
                            images)


def _param_name(key: str) -> str:
    return key.replace(".", "__")


def _key(name: str) -> str:
    return name.replace("__", ".")


def loss_slots(sample: Sample) -> torch.Tensor:
    """Slots whose next-token distribution is the target's own generation: slot ``j``
    (predicting token ``j + 2``) counts from the last prompt token on."""
    length = len(sample.token_ids)
    mask = torch.zeros(length - 1, dtype=torch.bool)
    mask[max(sample.answer_start - 2, 0):] = True
    image_positions = {t for s in sample.images for t in range(s.start, s.end)}
    for j in range(length - 1):
        if j + 1 in image_positions:  # image slots are compressed or dropped
            mask[j] = False
    return mask
