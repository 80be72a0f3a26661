"""Patch: accept ``"method": "vispec"`` wherever vLLM builds a speculative config."""

from __future__ import annotations

from .registry import Patch


def _make_wrapper(original):
    def create_speculative_config(self, target_model_config, target_parallel_config):
        from ..config import check_parallelism, is_vispec, to_eagle_config
        spec = dict(self.speculative_config or {})
        for flag, key, value in (("--spec-method", "method", self.spec_method),
                                 ("--spec-model", "model", self.spec_model),
                                 ("--spec-tokens", "num_speculative_tokens",
                                  self.spec_tokens)):
            if value is not None:
                if key in spec:
                    raise ValueError(f"{flag} and --speculative-config['{key}'] are "
                                     "mutually exclusive")
                spec[key] = value
        if is_vispec(spec):
            check_parallelism(target_parallel_config)
            # A copy: the user's dict (LLM(speculative_config=...)) stays untouched.
            self.speculative_config = to_eagle_config(spec, target_model_config)
            self.spec_method = self.spec_model = self.spec_tokens = None
        return original(self, target_model_config, target_parallel_config)
    return create_speculative_config


PATCH = Patch(
    name="speculative_method_vispec",
    target="vllm.engine.arg_utils:EngineArgs.create_speculative_config",
    what='Rewrites a "method": "vispec" config into vLLM\'s EAGLE config for the prepared '
         "ViSpec draft, after checking it (options, draft path, fit with the target).",
    why="SpeculativeConfig.method is a closed Literal and vLLM has no registry of "
        "speculative methods; this is the one place both `vllm serve` and `LLM(...)` pass "
        "through. Running as EAGLE keeps every use_eagle() path (draft KV cache, scheduler "
        "lookahead, prefix-cache block drop) correct.",
    remove_when="vLLM offers a way to register a speculative method.",
    make_wrapper=_make_wrapper,
)
