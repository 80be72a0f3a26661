"""Patch: accept ``"method": "vispec"`` wherever vLLM builds a speculative config.

``EngineArgs.create_speculative_config`` is where a request for vispec first becomes
visible (``vllm serve`` and ``LLM(...)`` both pass), so it is also where an unsupported
vLLM refuses vispec: there only :data:`VERSION_GUARD` is applied.
"""

from __future__ import annotations

from .registry import Patch

METHOD = "vispec"
_FLAGS = (("--spec-method", "method", "spec_method"),
          ("--spec-model", "model", "spec_model"),
          ("--spec-tokens", "num_speculative_tokens", "spec_tokens"))


def asks_for_vispec(engine_args) -> bool:
    """Whether these EngineArgs ask for vispec (``speculative_config`` or --spec-method).
    Reads attributes defensively: it also runs on vLLM versions we do not support."""
    spec = getattr(engine_args, "speculative_config", None)
    return (getattr(engine_args, "spec_method", None) == METHOD
            or (isinstance(spec, dict) and spec.get("method") == METHOD))


def requested_spec(engine_args) -> dict:
    """The speculative config with the --spec-* flags merged in (as vLLM merges them), on
    a copy: the user's dict (LLM(speculative_config=...)) stays untouched."""
    spec = dict(engine_args.speculative_config or {})
    for flag, key, attr in _FLAGS:
        value = getattr(engine_args, attr)
        if value is not None:
            if key in spec:
                raise ValueError(f"{flag} and --speculative-config['{key}'] are "
                                 "mutually exclusive")
            spec[key] = value
    return spec


def _make_wrapper(original):
    def create_speculative_config(self, target_model_config, target_parallel_config):
        if not asks_for_vispec(self):
            return original(self, target_model_config, target_parallel_config)
        from ..config import check_parallelism, to_eagle_config
        spec = requested_spec(self)
        check_parallelism(target_parallel_config)
        self.speculative_config = to_eagle_config(spec, target_model_config)
        self.spec_method = self.spec_model = self.spec_tokens = None
        return original(self, target_model_config, target_parallel_config)
    return create_speculative_config


TARGET = "vllm.engine.arg_utils:EngineArgs.create_speculative_config"
PATCH = Patch(
    name="speculative_method_vispec",
    target=TARGET,
    what='Rewrites a "method": "vispec" config into vLLM\'s EAGLE config for the prepared '
         "ViSpec draft, after checking it (options, draft path, fit with the target). "
         "Any other config goes to vLLM untouched.",
    why="SpeculativeConfig.method is a closed Literal and vLLM has no registry of "
        "speculative methods; this is the one place both `vllm serve` and `LLM(...)` pass "
        "through. Running as EAGLE keeps every use_eagle() path (draft KV cache, scheduler "
        "lookahead, prefix-cache block drop) correct.",
    remove_when="vLLM offers a way to register a speculative method.",
    make_wrapper=_make_wrapper,
    upstream="none filed for a method registry (closest: the proposer-interface RFC "
             "vllm-project/vllm#36219)",
)


def make_version_guard(reason: str) -> Patch:
    """The one patch applied on an unsupported vLLM: a vispec request fails with
    ``reason``; everything else goes to vLLM untouched."""
    def make_wrapper(original):
        def create_speculative_config(self, *args, **kwargs):
            if asks_for_vispec(self):
                raise RuntimeError(reason)
            return original(self, *args, **kwargs)
        return create_speculative_config

    return Patch(
        name="vispec_version_guard",
        target=TARGET,
        what='On a vLLM outside the supported series: refuses "method": "vispec" with the '
             "version error; nothing else changes.",
        why="Our other patches are written against one vLLM series and are not applied "
            "elsewhere; without this a vispec request would fail on vLLM's closed "
            "method Literal with no word about the version.",
        remove_when="vLLM offers a way to register a speculative method.",
        make_wrapper=make_wrapper,
        upstream="none filed (our own version pin)",
    )
