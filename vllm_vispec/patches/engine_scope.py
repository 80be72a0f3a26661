"""Which engine uses vispec: every patch wrapper asks this first and is a pass-through
when the answer is no, so vLLM runs unchanged for engines without a vispec draft."""

from __future__ import annotations

import contextlib
import contextvars

from ..model.hf_config import DRAFT_ARCHITECTURE


def uses_vispec_draft(vllm_config) -> bool:
    """Whether ``vllm_config`` (a VllmConfig) speculates with a ViSpec draft: its draft
    config names our architecture (a vispec request is rewritten to that, see config)."""
    spec = getattr(vllm_config, "speculative_config", None)
    draft = getattr(spec, "draft_model_config", None)
    archs = getattr(getattr(draft, "hf_config", None), "architectures", None) or []
    return DRAFT_ARCHITECTURE in archs


def is_vispec_runner(runner) -> bool:
    """Whether a model runner belongs to a vispec engine (a few attribute reads)."""
    return uses_vispec_draft(getattr(runner, "vllm_config", None))


# True while a vispec engine's runner samples (see cpu_sampling): vLLM's module-level
# sampler helpers get no handle on their engine, so the runner's _sample marks its call.
_VISPEC_SAMPLING: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "vllm_vispec_sampling", default=False)


@contextlib.contextmanager
def vispec_sampling():
    token = _VISPEC_SAMPLING.set(True)
    try:
        yield
    finally:
        _VISPEC_SAMPLING.reset(token)


def in_vispec_sampling() -> bool:
    return _VISPEC_SAMPLING.get()
