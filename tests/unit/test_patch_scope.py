"""Every patch wrapper is a pass-through in an engine that does not use vispec: it calls
vLLM's original with the same arguments, returns its result and leaves the objects alone.
Small fakes stand in for vLLM's runner, configs and attention layers; the wrappers are built
from the registry's patches around recording originals, so vLLM itself is not touched."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from vllm_vispec.model.hf_config import DRAFT_ARCHITECTURE
from vllm_vispec.patches import PATCHES, tree_verification
from vllm_vispec.patches.engine_scope import in_vispec_sampling, vispec_sampling

BY_NAME = {p.name: p for p in PATCHES}


class Recorder:
    """A stand-in for vLLM's original: records its calls, returns a fresh object."""

    def __init__(self, also=None):
        self.calls, self.also = [], also

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        if self.also:
            self.also()
        self.result = object()
        return self.result


def engine_config(vispec: bool, **fields):
    archs = [DRAFT_ARCHITECTURE] if vispec else ["EagleLlamaForCausalLM"]
    spec = SimpleNamespace(method="eagle", parallel_drafting=False,
                           use_heterogeneous_vocab=False,
                           draft_model_config=SimpleNamespace(
                               hf_config=SimpleNamespace(architectures=archs)))
    config = SimpleNamespace(
        speculative_config=spec,
        parallel_config=SimpleNamespace(distributed_executor_backend=None,
                                        pipeline_parallel_size=1, use_ubatching=False),
        attention_config=SimpleNamespace(hisparse_config=None), watermark_config=None,
        compilation_config=SimpleNamespace(static_forward_context={}))
    for name, value in fields.items():
        setattr(config, name, value)
    return config


def runner(vispec: bool):
    return SimpleNamespace(vllm_config=engine_config(vispec))


def wrapped(name, original):
    return BY_NAME[name].make_wrapper(original)


@pytest.fixture(autouse=True)
def no_tree_step_in_flight():
    tree_verification._set_active(None, {})
    yield
    tree_verification._set_active(None, {})


# ---- runner-level patches ---------------------------------------------------------------

@pytest.mark.parametrize("name", ["tree_positions", "tree_sampler", "zero_draft_sampling",
                                  "vispec_sampling_scope", "tree_steps_outside_full_graphs"])
def test_runner_patches_pass_through_without_vispec(name):
    original = Recorder()
    plain = runner(vispec=False)
    before = dict(vars(plain))
    metadata = SimpleNamespace(num_draft_tokens=[0, 0], max_spec_len=0)
    args = (plain, "logits-or-scheduler-output", metadata)
    assert wrapped(name, original)(*args) is original.result
    assert original.calls == [(args, {})]
    assert vars(plain) == before  # nothing set on vLLM's runner


def test_zero_draft_step_samples_as_without_drafts_in_vispec_engines_only():
    cut = SimpleNamespace(num_draft_tokens=[0, 0, 0])
    drafted = SimpleNamespace(num_draft_tokens=[0, 2, 0])
    for vispec, metadata, passed in [(True, cut, None), (True, drafted, drafted),
                                     (False, cut, cut)]:
        original = Recorder()
        r = runner(vispec)
        wrapped("zero_draft_sampling", original)(r, "logits", metadata)
        assert original.calls == [((r, "logits", passed), {})]


def test_sampling_scope_marks_only_a_vispec_runners_sampling():
    seen = []
    original = Recorder(also=lambda: seen.append(in_vispec_sampling()))
    sample = wrapped("vispec_sampling_scope", original)
    sample(runner(vispec=True), "logits", None)
    sample(runner(vispec=False), "logits", None)
    assert seen == [True, False]
    assert not in_vispec_sampling()


def test_tree_sampler_ends_the_tree_step_of_its_own_engine_only():
    layer = SimpleNamespace(layer_name="model.layers.0.attn")
    tree_verification._set_active("a tree step", {layer.layer_name: layer})
    wrapped("tree_sampler", Recorder())(runner(vispec=False), "logits", None)
    assert tree_verification._ACTIVE["step"] == "a tree step"
    wrapped("tree_sampler", Recorder())(runner(vispec=True), "logits", None)
    assert tree_verification._ACTIVE["step"] is None


# ---- attention ---------------------------------------------------------------------------

class FakeStep:
    def __init__(self):
        self.attended = 0

    def attend(self, *args):
        self.attended += 1


def attention_impl():
    return SimpleNamespace(attn_type="decoder", sliding_window=None, alibi_slopes=None,
                           logits_soft_cap=None, sinks=None, scale=1.0)


@pytest.mark.parametrize("name", ["tree_attention_cpu", "tree_attention_flash_attn",
                                  "tree_attention_flashinfer", "tree_attention_triton_attn"])
def test_tree_attention_acts_only_on_the_layers_of_the_engine_in_a_tree_step(name):
    ours = SimpleNamespace(layer_name="model.layers.0.attn", isa="vec")
    other_engines = SimpleNamespace(layer_name="model.layers.0.attn", isa="vec")
    step = FakeStep()
    forward = wrapped(name, Recorder())
    args = ("q", "k", "v", "kv_cache", "attn_metadata", "output")

    assert forward(attention_impl(), ours, *args) is not None  # no step: vLLM's only
    tree_verification._set_active(step, {ours.layer_name: ours})
    original = Recorder()
    result = wrapped(name, original)(attention_impl(), other_engines, *args)
    assert result is original.result and step.attended == 0
    forward(attention_impl(), ours, *args)
    assert step.attended == 1


# ---- sampler helper on CPU -------------------------------------------------------------

def test_cpu_expand_acts_only_inside_a_vispec_engines_sampling():
    original = Recorder()
    expand = wrapped("cpu_expand_batch_to_tokens", original)
    x, cu = torch.tensor([0.5, 2.0]), torch.tensor([1, 3], dtype=torch.int32)
    assert expand(x, cu, 3) is original.result
    with vispec_sampling():
        assert expand(x, cu, 3).tolist() == [0.5, 2.0, 2.0]
        on_meta = x.to("meta")
        assert expand(on_meta, cu, 3) is original.result  # not a CPU tensor: vLLM's
    assert len(original.calls) == 2


# ---- proposer and configs --------------------------------------------------------------

def test_eagle_proposer_stays_an_eagle_proposer_without_a_vispec_draft():
    from vllm.v1.spec_decode.eagle import EagleProposer

    from vllm_vispec.proposer import VispecProposer
    new = wrapped("vispec_proposer", object.__new__).__func__
    plain = new(EagleProposer, engine_config(vispec=False), "cpu")
    assert type(plain) is EagleProposer
    assert type(new(EagleProposer, engine_config(vispec=True), "cpu")) is VispecProposer

    class OtherProposer(EagleProposer):  # a subclass of vLLM's keeps its own class
        pass
    assert type(new(OtherProposer, engine_config(vispec=True), "cpu")) is OtherProposer


def test_speculative_config_of_another_method_goes_to_vllm_untouched():
    original = Recorder()
    user_spec = {"method": "ngram", "num_speculative_tokens": 2}
    args = SimpleNamespace(speculative_config=user_spec, spec_method=None, spec_model=None,
                           spec_tokens=3)  # a conflict vLLM itself reports
    create = wrapped("speculative_method_vispec", original)
    assert create(args, "target model config", "target parallel config") is original.result
    assert original.calls == [((args, "target model config", "target parallel config"), {})]
    assert args.speculative_config is user_spec and user_spec == {
        "method": "ngram", "num_speculative_tokens": 2}
    assert args.spec_tokens == 3


def test_runner_selection_lists_vispec_only_for_vispec_engines():
    from vllm.config.vllm import VllmConfig

    from vllm_vispec import plugin
    plugin.register()
    unsupported = VllmConfig._get_v2_model_runner_unsupported_features
    assert "speculative method 'vispec'" in unsupported(engine_config(vispec=True))
    assert unsupported(engine_config(vispec=False)) == []
    # Settings that force Model Runner V2 are vLLM's business without vispec.
    hisparse = SimpleNamespace(hisparse_config=object())
    assert unsupported(engine_config(vispec=False, attention_config=hisparse)) == []
