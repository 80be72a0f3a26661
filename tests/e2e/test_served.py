"""Lossless output through `vllm serve`: concurrent OpenAI chat requests with base64
images, vispec vs the offline run of vLLM without speculation or plugin, token for token."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from matrix import rows
from prompts import conversations
from vllm_runs import MAX_TOKENS, vispec_config

from vllm_vispec.serve_process import VllmServer
from vllm_vispec.tiny import tiny_target

SERVE_ARGS = ["--dtype", "float32", "--max-model-len", "1024", "--enforce-eager",
              "--max-num-seqs", "8", "--served-model-name", "tiny",
              "--limit-mm-per-prompt", json.dumps({"image": 2})]


def chat(server: VllmServer, messages: list[dict]) -> dict:
    return server.post("/v1/chat/completions", {
        "model": "tiny", "messages": messages, "temperature": 0, "max_tokens": MAX_TOKENS,
        "ignore_eos": True, "return_token_ids": True})


# The offline tests take every target at k = 1 and 3; here the question is the served
# layout (API server, engine core, worker). LLaVA is served below with trees, and with
# chains of 3 against plain vLLM 500 times in the soak (tests/e2e/test_soak.py).
@pytest.mark.parametrize("kind,k", rows([("qwen2_5_vl", 1), ("qwen3_vl", 3)],
                                        [("llava", 1), ("llava", 3), ("qwen2_5_vl", 3)]))
def test_served_vispec_matches_no_speculation(kind, k, baseline, tmp_path):
    expected = baseline(kind)
    convs = conversations()
    args = ["--speculative-config", json.dumps(vispec_config(kind, k)), *SERVE_ARGS]
    # vLLM's default layout: API server, engine core and worker in separate processes.
    with VllmServer(str(tiny_target(kind)), args, log_path=tmp_path / "server.log",
                    env={"VLLM_ENABLE_V1_MULTIPROCESSING": "1"}) as server:
        with ThreadPoolExecutor(max_workers=len(convs)) as pool:
            replies = dict(zip(convs, pool.map(lambda c: chat(server, c), convs.values())))
        alone = chat(server, convs["two_images"])
        counters = server.spec_decode_counters()

    for name, reply in replies.items():
        choice = reply["choices"][0]
        assert choice["token_ids"] == expected[name][0], f"{name} differs when served"
        assert choice["message"]["content"] == expected[name][1]
    assert alone["choices"][0]["token_ids"] == expected["two_images"][0]
    assert counters["num_draft_tokens"] > 0
    assert 0 < counters["num_accepted_tokens"] < counters["num_draft_tokens"]


def test_served_trees_match_no_speculation(baseline, tmp_path):
    """EAGLE-2 trees through `vllm serve` (trees for the concurrent batch too)."""
    expected = baseline("llava")
    convs = conversations()
    spec = vispec_config("llava", 2, tree={"depth": 2, "top_k": 4, "total_tokens": 11,
                                           "chain_above_batch": 64, "off_above_batch": 64})
    args = ["--speculative-config", json.dumps(spec), *SERVE_ARGS]
    with VllmServer(str(tiny_target("llava")), args, log_path=tmp_path / "server.log",
                    env={"VLLM_ENABLE_V1_MULTIPROCESSING": "1"}) as server:
        with ThreadPoolExecutor(max_workers=len(convs)) as pool:
            replies = dict(zip(convs, pool.map(lambda c: chat(server, c), convs.values())))
        counters = server.spec_decode_counters()
    for name, reply in replies.items():
        assert reply["choices"][0]["token_ids"] == expected[name][0], f"{name} differs"
    assert 0 < counters["num_accepted_tokens"] < counters["num_draft_tokens"]
