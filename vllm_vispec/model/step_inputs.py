"""What the proposer hands the draft model for one forward, beyond vLLM's arguments."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .compressed_attention import CompressedAttentionMetadata


@dataclass
class DraftStepInputs:
    attention: CompressedAttentionMetadata
    # [num_tokens, H]: the global vector fused into each slot (zero before any image).
    global_vectors: torch.Tensor
    # Slots whose layer input is a compressed image token instead of the fc output.
    replace_index: torch.Tensor | None = None  # [R] token indices
    replace_rows: torch.Tensor | None = None  # [R, H]

    @property
    def num_tokens(self) -> int:
        return self.global_vectors.shape[0]
