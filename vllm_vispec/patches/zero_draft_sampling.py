"""Patch: in a vispec engine, a step whose drafts were all cut samples as a step without
drafts.

vLLM's scheduler trims a request's speculative tokens to the token budget; when it trims
every request's to nothing the runner still passes spec-decode metadata with zero draft
tokens, and vLLM 0.32's rejection sampler then fails in top-k / top-p on an empty tensor
("max(): ... numel() == 0"). Big vispec trees make this common. The same vLLM bug can hit
eagle or ngram engines; it is fixed here for vispec engines only, so that installing the
plugin changes nothing for engines that do not use it.
"""

from __future__ import annotations

from .engine_scope import is_vispec_runner
from .registry import Patch


def _make_wrapper(original):
    def _sample(self, logits, spec_decode_metadata):
        if (spec_decode_metadata is not None and is_vispec_runner(self)
                and not any(spec_decode_metadata.num_draft_tokens)):
            # One logit row per request: exactly what sampling without drafts reads.
            return original(self, logits, None)
        return original(self, logits, spec_decode_metadata)
    return _sample


PATCH = Patch(
    name="zero_draft_sampling",
    target="vllm.v1.worker.gpu_model_runner:GPUModelRunner._sample",
    what="In a vispec engine, a step that has spec-decode metadata but zero draft tokens "
         "(all cut by the token budget) samples as a step without drafts.",
    why="vLLM 0.32's rejection sampler fails on zero draft tokens with top-k / top-p "
        "(apply_top_k_top_p on an empty tensor).",
    remove_when="vLLM's runner skips the rejection sampler when a step has no drafts.",
    make_wrapper=_make_wrapper,
    upstream="none filed in vLLM (vLLM-Gaudi fixed the same case in its own sampler, "
             "vllm-project/vllm-gaudi#593)",
    wraps="tree_sampler",
)
