"""Qwen3-VL-MoE targets take the same ViSpec draft as dense Qwen3-VL ones (NeMo
Automodel's, built from the target's text config): greedy vispec output on the tiny
Qwen3-VL-MoE target equals vLLM's without speculation and without any plugin."""

from __future__ import annotations

import json

from prompts import conversations
from vllm_runs import greedy_chat, offline_llm, spec_counters, vispec_config

from vllm_vispec.tiny import tiny_target

KIND = "qwen3_vl_moe"
K = 3


def test_vispec_matches_no_speculation_on_qwen3_vl_moe(baseline):
    from vllm.model_executor.layers.fused_moe import RoutedExperts

    text_config = json.loads((tiny_target(KIND) / "config.json").read_text())["text_config"]
    expected = baseline(KIND)
    convs = conversations()
    with offline_llm(KIND, vispec_config(KIND, K)) as llm:
        runner = llm.llm_engine.model_executor.driver_worker.worker.model_runner
        target, drafter = runner.model, runner.drafter
        # The engine really serves the MoE architecture: every decoder layer holds
        # vLLM's fused-MoE experts (run by the CPU build's MoE path), not a dense MLP.
        architecture = type(target).__name__
        moe_layers = [m for m in target.modules() if isinstance(m, RoutedExperts)]
        dims = drafter._draft().dims
        batched = greedy_chat(llm, convs)
        single = {}
        for name, conv in convs.items():
            single.update(greedy_chat(llm, {name: conv}))
        counters = spec_counters(llm)
        had_image_state = bool(drafter.image_store.per_request)
        greedy_chat(llm, {"after": convs["text"]})  # a later step frees ended requests
        leftover = set(drafter.image_store.per_request)

    assert architecture == "Qwen3VLMoeForConditionalGeneration"
    assert len(moe_layers) == text_config["num_hidden_layers"]
    # The draft is dense: its MLP takes the text config's (unused by the target)
    # intermediate_size, its attention the target's GQA shape and head_dim.
    assert dims.intermediate_size == text_config["intermediate_size"]
    assert dims.intermediate_size != text_config["moe_intermediate_size"]
    assert (dims.num_heads, dims.num_kv_heads, dims.head_dim) == (
        text_config["num_attention_heads"], text_config["num_key_value_heads"],
        text_config["head_dim"])

    assert len(convs) >= 4  # a batch of at least four concurrent requests
    for name in convs:
        assert batched[name][0] == expected[name][0], f"{name} (batched) differs"
        assert single[name][0] == expected[name][0], f"{name} (alone) differs"
    # Some drafts accepted and some rejected on the way to identical output.
    assert 0 < counters["num_accepted_tokens"] < counters["num_draft_tokens"]
    assert len(counters["num_accepted_tokens_per_pos"]) == K
    # Image state existed for the image requests and was freed once they ended.
    assert had_image_state and not leftover
