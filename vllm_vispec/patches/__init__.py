"""All patches of vLLM internals, in one registry (see registry.Patch for the fields).

| patch | target | remove when |
|---|---|---|
| speculative_method_vispec | EngineArgs.create_speculative_config | vLLM can register a speculative method |
| classic_runner_for_vispec | VllmConfig._get_v2_model_runner_unsupported_features | our Model Runner V2 speculator exists |
"""

from __future__ import annotations

from . import runner_selection, speculative_method
from .registry import Patch

PATCHES: tuple[Patch, ...] = (speculative_method.PATCH, runner_selection.PATCH)


def apply_all() -> None:
    for patch in PATCHES:
        patch.apply()
