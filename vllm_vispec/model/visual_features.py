"""The part of a target's encoder output the draft sees.

The draft reads the target's embedding-layer output (NeMo Automodel trains it on
``hidden_states[0]``, the authors' code on the merged input embeddings). For most targets
that is the encoder output itself. Qwen3-VL's encoder output holds, per image token, the
main feature followed by one DeepStack feature per level; only the main feature enters the
embedding layer (the DeepStack ones are added to the first layers' hidden states), so the
draft takes the first ``hidden_size`` columns.
"""

from __future__ import annotations

import torch


def embedding_layer_features(features: torch.Tensor, hidden_size: int) -> torch.Tensor:
    width = features.shape[-1]
    if width == hidden_size:
        return features
    if width % hidden_size:
        raise ValueError(f"the target's encoder output is {width} wide, neither the draft's "
                         f"width {hidden_size} nor a DeepStack stack of it")
    return features[..., :hidden_size]
