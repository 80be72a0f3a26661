"""A registry of small named patches of vLLM internals.

Each patch says what it changes, why, and when it can go. Patches are applied once per
process by :func:`apply_all` (vLLM loads our plugin in every process it starts).
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

    def owner_and_attr(self):
        module_name, qualname = self.target.split(":")
        *owner_path, attr = qualname.split(".")
        owner = importlib.import_module(module_name)
        for part in owner_path:
            owner = getattr(owner, part)
        return owner, attr

    def is_applied(self) -> bool:
        owner, attr = self.owner_and_attr()
        return getattr(getattr(owner, attr), MARKER, None) == self.name

    def apply(self) -> None:
        owner, attr = self.owner_and_attr()
        original = getattr(owner, attr)
        if getattr(original, MARKER, None) == self.name:
            return
        if hasattr(original, MARKER):
            raise RuntimeError(f"{self.target} is already patched by "
                               f"{getattr(original, MARKER)!r}; cannot apply {self.name!r}")
        wrapper = self.make_wrapper(original)
        # A staticmethod (e.g. a replacement __new__) carries the marker on its function.
        func = wrapper.__func__ if isinstance(wrapper, staticmethod) else wrapper
        functools.update_wrapper(func, original)
        setattr(func, MARKER, self.name)
        setattr(owner, attr, wrapper)
