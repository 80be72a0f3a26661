"""Plugin registration, the vLLM version pin, and the patch registry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types

import pytest

from vllm_vispec import patches, plugin
from vllm_vispec.patches import PATCHES
from vllm_vispec.patches.registry import Patch, applied_patches
from vllm_vispec.tiny import tiny_target


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
    assert all(p.is_applied() for p in PATCHES if p.applies_here())
    # The CPU build: the CPU-only patches are among them.
    assert {p.name for p in PATCHES if p.platform == "cpu"} <= \
        {p.name for p in PATCHES if p.is_applied()}


def test_every_patch_documents_itself():
    names = [p.name for p in PATCHES]
    assert len(names) == len(set(names))
    for p in PATCHES:
        assert p.what and p.why and p.remove_when and ":" in p.target
        assert p.upstream, f"{p.name} names no upstream issue or PR (or 'none filed')"
        if p.wraps:  # the patch it wraps is ours, on the same target, applied before it
            inner = names.index(p.wraps)
            assert inner < names.index(p.name) and PATCHES[inner].target == p.target


def probe_module(name):
    class Holder:
        @staticmethod
        def f():
            return 1
    mod = types.ModuleType(name)
    mod.Holder = Holder
    sys.modules[name] = mod
    return Holder


def test_a_patch_may_wrap_the_one_it_names_and_both_stay_applied():
    holder = probe_module("vispec_stack_probe")
    inner = Patch("inner", "vispec_stack_probe:Holder.f", "w", "y", "r",
                  lambda orig: lambda: orig() + 1)
    outer = Patch("outer", "vispec_stack_probe:Holder.f", "w", "y", "r",
                  lambda orig: lambda: orig() * 10, wraps="inner")
    inner.apply()
    outer.apply()
    outer.apply()  # idempotent
    assert holder.f() == 20
    assert applied_patches(holder.f) == ["outer", "inner"]
    assert inner.is_applied() and outer.is_applied()


def test_a_platform_patch_is_not_applied_off_its_platform(monkeypatch):
    holder = probe_module("vispec_platform_probe")
    elsewhere = Patch("elsewhere", "vispec_platform_probe:Holder.f", "w", "y", "r",
                      lambda orig: lambda: 2, upstream="none filed", platform="tpu")
    monkeypatch.setattr(patches, "PATCHES", (elsewhere,))
    patches.apply_all()
    assert not elsewhere.applies_here() and not elsewhere.is_applied() and holder.f() == 1


def test_the_cpu_patches_are_for_the_cpu_platform_only(monkeypatch):
    from vllm.platforms import current_platform
    cpu_only = [p for p in PATCHES if p.platform == "cpu"]
    assert {"cpu_expand_batch_to_tokens", "tree_attention_cpu"} <= {p.name for p in cpu_only}
    assert all(p.applies_here() for p in cpu_only)
    monkeypatch.setattr(type(current_platform), "is_cpu", lambda self: False)
    assert not any(p.applies_here() for p in cpu_only)


def test_a_foreign_patch_on_the_same_target_is_refused():
    Holder = probe_module("vispec_patch_probe")
    first = Patch("first", "vispec_patch_probe:Holder.f", "w", "y", "r",
                  lambda orig: lambda: orig() + 1)
    second = Patch("second", "vispec_patch_probe:Holder.f", "w", "y", "r",
                   lambda orig: lambda: orig() * 10)
    first.apply()
    first.apply()  # idempotent
    assert Holder.f() == 2
    with pytest.raises(RuntimeError, match="already patched by 'first'"):
        second.apply()


# ---- another vLLM version (each in its own process: this one's patches stay) ------------

UNSUPPORTED_RUN = """
import json, sys
import vllm
vllm.__version__ = "0.33.0"
import vllm.plugins
vllm.plugins.load_general_plugins()  # vLLM's own loading, as in every process it starts
from vllm import ModelRegistry
from vllm.engine.arg_utils import EngineArgs
from vllm_vispec.model.hf_config import DRAFT_ARCHITECTURE
from vllm_vispec.patches import PATCHES
from vllm_vispec.patches.registry import applied_patches

def outcome(**kwargs):
    try:
        config = EngineArgs(model=sys.argv[1], max_model_len=512, **kwargs
                            ).create_engine_config()
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    spec = config.speculative_config
    return spec.method if spec else "no speculation"

def applied(patch):
    try:
        owner, attr = patch.owner_and_attr()
    except ImportError:  # a backend whose package is missing here (FlashInfer)
        return []
    return applied_patches(getattr(owner, attr))

print(json.dumps({
    "applied": {p.target: applied(p) for p in PATCHES},
    "draft_registered": DRAFT_ARCHITECTURE in ModelRegistry.get_supported_archs(),
    "plain": outcome(),
    "ngram": outcome(speculative_config={"method": "ngram", "num_speculative_tokens": 2,
                                         "prompt_lookup_max": 3}),
    "vispec": outcome(speculative_config={"method": "vispec", "model": "/nowhere",
                                          "num_speculative_tokens": 2}),
    "vispec_flag": outcome(spec_method="vispec", spec_tokens=2),
}))
"""


def run_under_vllm_0_33(**env):
    proc = subprocess.run([sys.executable, "-c", UNSUPPORTED_RUN, str(tiny_target("llava"))],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", **env})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


VERSION_ERROR = "vllm-vispec supports vLLM 0.32.x only, but vLLM 0.33.0 is installed"


def test_another_vllm_gets_no_patch_and_a_warning_and_vispec_gets_the_version_error():
    result, stderr = run_under_vllm_0_33()
    assert VERSION_ERROR in stderr and "no patch of vLLM is applied" in stderr
    guard_only = {"vllm.engine.arg_utils:EngineArgs.create_speculative_config":
                  ["vispec_version_guard"]}
    assert {t: names for t, names in result["applied"].items() if names} == guard_only
    assert not result["draft_registered"]
    # vLLM works as without the plugin for everyone who does not ask for vispec ...
    assert result["plain"] == "no speculation" and result["ngram"] == "ngram"
    # ... and whoever asks for it is told why it is not there.
    assert result["vispec"] == f"RuntimeError: {plugin.version_problem('0.33.0')}"
    assert result["vispec_flag"] == result["vispec"]


def test_skipping_the_version_check_applies_every_patch():
    result, stderr = run_under_vllm_0_33(VLLM_VISPEC_SKIP_VERSION_CHECK="1")
    assert VERSION_ERROR not in stderr
    assert {name for names in result["applied"].values() for name in names} == \
        {p.name for p in PATCHES if p.applies_here()}
    assert result["draft_registered"] and result["ngram"] == "ngram"
    assert "ViSpec draft checkpoint not found" in result["vispec"]
