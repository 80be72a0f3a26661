"""vispec runs on vLLM's classic runner: where other settings force Model Runner V2 (on
which the draft would get no step inputs and propose from zeros, silently), the engine is
refused with the cause. Checked through vLLM's own VllmConfig code on config-like fakes."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from vllm_vispec import plugin
from vllm_vispec.config import check_model_runner
from vllm_vispec.model.hf_config import DRAFT_ARCHITECTURE


def config_like(vllm_config_class):
    """A class with VllmConfig's own (patched) runner-selection code and plain fields."""
    class ConfigLike(SimpleNamespace):
        use_v2_model_runner = vllm_config_class.use_v2_model_runner
        _validate_v2_model_runner = vllm_config_class._validate_v2_model_runner
        _get_v2_model_runner_unsupported_features = \
            vllm_config_class._get_v2_model_runner_unsupported_features

    def make(vispec=True, hisparse=None, watermark=None):
        archs = [DRAFT_ARCHITECTURE] if vispec else ["EagleLlamaForCausalLM"]
        return ConfigLike(
            speculative_config=SimpleNamespace(
                method="eagle", parallel_drafting=False, use_heterogeneous_vocab=False,
                draft_model_config=SimpleNamespace(
                    hf_config=SimpleNamespace(architectures=archs))),
            parallel_config=SimpleNamespace(distributed_executor_backend=None,
                                            pipeline_parallel_size=1, use_ubatching=False),
            attention_config=SimpleNamespace(hisparse_config=hisparse),
            watermark_config=watermark)
    return make


@pytest.fixture
def engine_config(monkeypatch):
    monkeypatch.delenv("VLLM_USE_V2_MODEL_RUNNER", raising=False)
    plugin.register()
    import vllm.config.vllm as module
    # The CPU build has no Triton backend; the check under test comes after that one.
    monkeypatch.setattr(module, "HAS_TRITON", True)
    return config_like(module.VllmConfig)


@pytest.mark.parametrize("forcing, cause", [
    (dict(hisparse=object()), "HiSparse"),
    (dict(watermark=object()), "watermarking"),
])
def test_settings_that_force_model_runner_v2_refuse_vispec(engine_config, forcing, cause):
    config = engine_config(**forcing)
    # vLLM picks V2 for these whatever its unsupported-feature list says ...
    assert config.use_v2_model_runner is True
    # ... and then validates V2 (VllmConfig.__post_init__): that is where vispec is refused.
    with pytest.raises(ValueError, match=rf"vispec runs on vLLM's classic \(V1\) model "
                                         rf"runner only, but {cause}.*requires Model Runner V2"):
        config._validate_v2_model_runner()


def test_the_same_settings_without_vispec_are_left_to_vllm(engine_config):
    config = engine_config(vispec=False, hisparse=object())
    assert config.use_v2_model_runner is True
    config._validate_v2_model_runner()  # vLLM's own checks only: none fail


def test_vispec_alone_falls_back_to_the_classic_runner(engine_config):
    assert engine_config().use_v2_model_runner is False
    assert engine_config(vispec=False).use_v2_model_runner is True


def test_v2_forced_by_the_environment_is_refused(engine_config, monkeypatch):
    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "1")
    with pytest.raises(ValueError, match="unset VLLM_USE_V2_MODEL_RUNNER"):
        check_model_runner()  # when the vispec config is read, before any engine config
    config = engine_config()
    assert config.use_v2_model_runner is True
    with pytest.raises(ValueError, match="but VLLM_USE_V2_MODEL_RUNNER=1 requires"):
        config._validate_v2_model_runner()
