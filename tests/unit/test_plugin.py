"""Plugin registration, the vLLM version pin, and the patch registry."""

from __future__ import annotations

import pytest

from vllm_vispec import plugin
from vllm_vispec.patches import PATCHES
from vllm_vispec.patches.registry import Patch


@pytest.mark.parametrize("version", ["0.32.0", "0.32.0+cpu", "0.32.3", "0.32.1rc1"])
def test_supported_versions_pass(version):
    plugin.check_vllm_version(version)


@pytest.mark.parametrize("version", ["0.33.0", "0.31.2+cpu", "1.32.0", "dev"])
def test_other_versions_fail_with_a_clear_message(version):
    with pytest.raises(RuntimeError, match=rf"supports vLLM 0\.32\.x only, but vLLM "
                                           rf"{version.replace('+', '.')} is installed"):
        plugin.check_vllm_version(version)


def test_register_is_idempotent_and_registers_the_draft():
    from vllm import ModelRegistry
    plugin.register()
    plugin.register()
    assert "EagleVispecForCausalLM" in ModelRegistry.get_supported_archs()
    assert all(p.is_applied() for p in PATCHES)


def test_every_patch_documents_itself():
    names = [p.name for p in PATCHES]
    assert len(names) == len(set(names))
    for p in PATCHES:
        assert p.what and p.why and p.remove_when and ":" in p.target


def test_a_foreign_patch_on_the_same_target_is_refused():
    class Holder:
        @staticmethod
        def f():
            return 1

    import sys
    import types
    mod = types.ModuleType("vispec_patch_probe")
    mod.Holder = Holder
    sys.modules["vispec_patch_probe"] = mod
    first = Patch("first", "vispec_patch_probe:Holder.f", "w", "y", "r",
                  lambda orig: lambda: orig() + 1)
    second = Patch("second", "vispec_patch_probe:Holder.f", "w", "y", "r",
                   lambda orig: lambda: orig() * 10)
    first.apply()
    first.apply()  # idempotent
    assert Holder.f() == 2
    with pytest.raises(RuntimeError, match="already patched by 'first'"):
        second.apply()
