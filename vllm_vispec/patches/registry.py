"""A registry of small named patches of vLLM internals.

Each patch says what it changes, why, which upstream issue or PR it works around, and when
it can go. Patches are applied once per process by :func:`apply_all` (vLLM loads our plugin
in every process it starts). Every wrapper is a pass-through outside engines that use
vispec (see engine_scope).
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass

MARKER = "__vllm_vispec_patch__"


@dataclass(frozen=True)
class Patch:
    name: str
    target: str  # "module:Class.method"
    what: str
    why: str
    remove_when: str
    # Receives the original callable, returns its replacement.
    make_wrapper: Callable[[Callable], Callable]
    # The upstream issue or PR this works around ("owner/repo#N ..."), or "none filed".
    upstream: str = ""
    # A vLLM platform ("cpu": current_platform.is_cpu()) outside which the patch is not
    # applied; None: every platform.
    platform: str | None = None
    # Skipped when its target module cannot be imported (a backend whose package is not
    # installed: nothing then runs the code it would patch).
    optional: bool = False
    # The name of a patch of ours on the same target that this one may wrap (applied
    # after it); any other patch already there is refused.
    wraps: str | None = None

    def owner_and_attr(self):
        module_name, qualname = self.target.split(":")
        *owner_path, attr = qualname.split(".")
        owner = importlib.import_module(module_name)
        for part in owner_path:
            owner = getattr(owner, part)
        return owner, attr

    def applies_here(self) -> bool:
        if self.platform is None:
            return True
        from vllm.platforms import current_platform
        return bool(getattr(current_platform, f"is_{self.platform}")())

    def is_applied(self) -> bool:
        try:
            owner, attr = self.owner_and_attr()
        except ImportError:
            if self.optional:  # its module cannot be imported here: nothing to patch
                return False
            raise
        return self.name in applied_patches(getattr(owner, attr))

    def apply(self) -> None:
        owner, attr = self.owner_and_attr()
        original = getattr(owner, attr)
        applied = applied_patches(original)
        if self.name in applied:
            return
        if applied and applied[0] != self.wraps:
            raise RuntimeError(f"{self.target} is already patched by {applied[0]!r}; "
                               f"cannot apply {self.name!r}")
        wrapper = self.make_wrapper(original)
        # A staticmethod (e.g. a replacement __new__) carries the marker on its function.
        func = wrapper.__func__ if isinstance(wrapper, staticmethod) else wrapper
        functools.update_wrapper(func, _function(original))
        setattr(func, MARKER, self.name)
        setattr(owner, attr, wrapper)


def _function(obj):
    return obj.__func__ if isinstance(obj, staticmethod) else obj


def applied_patches(obj) -> list[str]:
    """Names of our patches wrapped around ``obj``, outermost first."""
    names = []
    func = _function(obj)
    while func is not None and hasattr(func, MARKER):
        names.append(getattr(func, MARKER))
        func = _function(getattr(func, "__wrapped__", None))
    return names
