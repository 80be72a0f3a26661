"""ViSpec's feature fusion, ``fc(cat(e, img_fc(cat(h, g))))``, folded into one projection.

Both projections are linear with nothing between them, so with ``fc = [F_e | F_f]`` and
``img_fc = [W_h | W_g]`` (biases ``b_f``, ``b_i``):

    fc(cat(e, img_fc(cat(h, g)))) = [F_e | F_f W_h] cat(e, h) + (F_f W_g g + F_f b_i + b_f)

The first term is one ``2H -> H`` projection per token, as in EAGLE; the second depends on
the image only, so it is computed once per image (``image_bias``) and gathered per token.
The draft then costs per pass what a text-only EAGLE draft costs, instead of a second
``2H -> H`` projection per token. The products are formed once, in fp32, when the
checkpoint loads (which still reads ``fc`` and ``img_fc`` exactly as published).
"""

from __future__ import annotations

import torch
from torch import nn
from vllm.model_executor.layers.linear import ReplicatedLinear
from vllm.model_executor.model_loader.weight_utils import default_weight_loader


class FusedFeatures(nn.Module):

    def __init__(self, hidden_size: int, prefix: str) -> None:
        super().__init__()
        # Replicated on purpose (as in vLLM's EAGLE): its inputs, the embedding and the
        # target's feature, are whole on every tensor-parallel rank and so is the fused
        # feature the decoder layer takes; splitting it would add a gather per pass.
        self.proj = ReplicatedLinear(2 * hidden_size, hidden_size, bias=False,
                                     prefix=f"{prefix}.proj")
        self.register_buffer("image_weight", torch.zeros(hidden_size, hidden_size,
                                                         dtype=torch.float32),
                             persistent=False)  # F_f W_g
        self.register_buffer("image_offset", torch.zeros(hidden_size, dtype=torch.float32),
                             persistent=False)  # F_f b_i + b_f: the bias before any image

    def load(self, fc_weight: torch.Tensor, fc_bias: torch.Tensor | None,
             img_weight: torch.Tensor, img_bias: torch.Tensor | None) -> None:
        h, device = self.image_offset.shape[0], self.image_offset.device
        # On the model's device: two H x H products, seconds on a CPU for a 7B draft.
        fc_weight, img_weight = fc_weight.to(device).float(), img_weight.to(device).float()
        fc_bias = (torch.zeros(h, device=device) if fc_bias is None
                   else fc_bias.to(device).float())
        img_bias = (torch.zeros(h, device=device) if img_bias is None
                    else img_bias.to(device).float())
        f_e, f_f = fc_weight[:, :h], fc_weight[:, h:]
        w_h, w_g = img_weight[:, :h], img_weight[:, h:]
        folded = torch.cat((f_e, f_f @ w_h), dim=1)
        loader = getattr(self.proj.weight, "weight_loader", default_weight_loader)
        loader(self.proj.weight, folded.to(self.proj.weight.dtype))
        self.image_weight.copy_(f_f @ w_g)
        self.image_offset.copy_(f_f @ img_bias + fc_bias)

    def image_bias(self, global_vector: torch.Tensor) -> torch.Tensor:
        """``F_f W_g g + F_f b_i + b_f`` for an image's global vector ``g`` [H]."""
        g = global_vector.to(self.image_weight.dtype)
        return self.image_weight @ g + self.image_offset

    def forward(self, input_embeds: torch.Tensor, hidden_states: torch.Tensor,
                image_bias: torch.Tensor) -> torch.Tensor:
        fused, _ = self.proj(torch.cat((input_embeds, hidden_states), dim=-1))
        return fused + image_bias.to(fused.dtype)
