"""The draft's image inputs, in persistent device buffers.

Two tables hold every summarised image (a row per image, given out by the proposer's
``ImageStateStore``): the fused feature's bias its global vector gives (feature_fusion.py),
and its compressed tokens. Two per-token row buffers say, for the tokens of the next
forward, which image bias each takes (row 0: no image yet, a zero global vector) and which
compressed token replaces its input (row 0: none). The proposer fills the row buffers
before each forward with batched tensor ops; the forward only gathers. Fixed addresses and
shapes: nothing is handed to the model per call, so the forward can be compiled (and
captured in CUDA graphs, once vLLM splits the graph at the draft's attention op).
"""

from __future__ import annotations

import torch
from torch import nn

from ..draft_plan import compressed_row


class ImageInputs(nn.Module):

    def __init__(self, capacity: int, num_compressed: int, hidden_size: int,
                 max_num_tokens: int) -> None:
        super().__init__()
        self.capacity = capacity
        self.num_compressed = num_compressed
        self.register_buffer("image_biases", torch.zeros(capacity + 1, hidden_size),
                             persistent=False)
        self.register_buffer("compressed_tokens",
                             torch.zeros(capacity * max(num_compressed, 1) + 1, hidden_size),
                             persistent=False)
        self.register_buffer("global_rows", torch.zeros(max_num_tokens, dtype=torch.long),
                             persistent=False)
        self.register_buffer("replace_rows", torch.zeros(max_num_tokens, dtype=torch.long),
                             persistent=False)

    @property
    def dtype(self) -> torch.dtype:
        return self.image_biases.dtype

    def set_no_image_bias(self, bias: torch.Tensor) -> None:
        self.image_biases[0] = bias.to(self.image_biases.dtype)

    def store(self, row: int, compressed: torch.Tensor, image_bias: torch.Tensor) -> None:
        """An image's compressed tokens [num_compressed, H] and bias [H] into table row
        ``row`` (> 0)."""
        self.image_biases[row] = image_bias.to(self.image_biases.dtype)
        n = self.num_compressed
        if n:
            first = compressed_row(row, 0, n)
            self.compressed_tokens[first:first + n] = compressed[:n].to(
                self.compressed_tokens.dtype)

    def image_bias_rows(self, num_tokens: int) -> torch.Tensor:
        return self.image_biases[self.global_rows[:num_tokens]]

    def replace_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` with each compressed slot's input replaced by its compressed token."""
        rows = self.replace_rows[:x.shape[0]]
        return torch.where((rows > 0)[:, None], self.compressed_tokens[rows].to(x.dtype), x)
