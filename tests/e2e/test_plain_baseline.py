"""The baseline of the equality tests is vLLM alone: its subprocess (and, at TP=2, each
worker) has vllm-vispec installed but not loaded, and the same check run in this process,
where vLLM loaded the plugin, finds it."""

from __future__ import annotations

from plain_vllm import (plain_greedy, plain_run, plain_vllm_checks, plugin_free_problems,
                        plugin_state)
from prompts import conversations
from vllm_runs import GREEDY


def assert_plain(states: list[dict], processes: int) -> None:
    assert len({s["pid"] for s in states}) == processes
    for state in states:
        assert "vispec" in state["installed_general_plugins"]  # installed, yet not loaded
        assert state["plugins_loaded"] and state["allowed_general_plugins"] == []
        assert state["vispec_modules"] == [] and state["patched_targets"] == []
        assert not state["draft_registered"]
        assert plugin_free_problems(state) == []


def test_baseline_subprocess_has_no_plugin():
    convs = conversations()
    # The baseline fixture's own request (served from the session cache when it ran).
    run = plain_run("llava", [(list(convs.values()), GREEDY)])
    assert_plain(run["plugin_states"], processes=1)  # the engine runs in the subprocess
    # Real outputs came back, one per conversation, of the requested length.
    (outs,) = run["outputs"]
    assert len(outs) == len(convs)
    assert all(len(ids) == GREEDY["max_tokens"] and text for ids, text in outs)
    assert plain_greedy("llava", convs) == {n: tuple(o) for n, o in zip(convs, outs)}


def test_check_finds_the_plugin_in_the_test_process():
    import vllm.plugins
    vllm.plugins.load_general_plugins()  # what every engine built here does first
    problems = plugin_free_problems(plugin_state(plain_vllm_checks()))
    assert any("VLLM_PLUGINS" in p for p in problems)
    assert any("vispec_modules" in p for p in problems)
    assert any("patched_targets" in p and "create_speculative_config" in p for p in problems)
    assert any("draft architecture" in p for p in problems)


def test_tp2_workers_have_no_plugin(monkeypatch):
    # As test_tensor_parallel's baseline (the same request): one OpenMP binding per rank.
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1")
    run = plain_run("llava", [(list(conversations().values()), GREEDY)],
                    tensor_parallel_size=2, distributed_executor_backend="mp")
    assert_plain(run["plugin_states"], processes=3)  # the subprocess and two workers
