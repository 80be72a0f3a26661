"""Prefix caching with pictures repeated across requests, chunked prefill splitting them,
and a KV cache small enough to preempt: greedy vispec output stays identical to the output
without speculation, and acceptance does not collapse when the prefix cache supplies the
prompt (the draft's image state comes back from the image's content hash). The output
without speculation comes from vLLM with no plugin loaded (plain_vllm)."""

from __future__ import annotations

import pytest
from matrix import rows
from plain_vllm import plain_run
from prompts import text
from vllm_runs import GREEDY, greedy_params, offline_llm, spec_counters, vispec_config

from vllm_vispec.tiny.images import image_part, shapes_image

BLOCK = 32  # the smallest block the CPU attention backend takes
ROUNDS = 2


def shared_picture_conversations(round_: int) -> dict[str, list[dict]]:
    """Six requests, two per picture; each picture and the long instruction after it
    (several KV blocks) come again in every request and round, the question changes."""
    convs = {}
    for i in range(6):
        convs[f"round{round_}-req{i}"] = [{"role": "user", "content": [
            image_part(shapes_image(20 + i // 2)),
            text("Look closely at every shape in this picture, its colour and place. " * 3),
            text(f"Question {round_ * 6 + i}: which shape is largest?")]}]
    return convs


@pytest.fixture
def reused_tokens(monkeypatch) -> list[int]:
    """Prompt tokens each new request found already computed when the scheduler admitted
    it (the engine core runs in the test process). vLLM's own hit counters and
    RequestOutput.num_cached_tokens read 0 under speculative decoding with a token budget
    of 12, though the blocks are reused."""
    from vllm.v1.core.sched.scheduler import Scheduler
    reused: list[int] = []
    schedule = Scheduler.schedule

    def recording_schedule(self, *args, **kwargs):
        out = schedule(self, *args, **kwargs)
        reused.extend(r.num_computed_tokens for r in out.scheduled_new_reqs)
        return out

    monkeypatch.setattr(Scheduler, "schedule", recording_schedule)
    return reused


def run(kind: str, speculative_config: dict, reused: list[int], **engine) -> dict:
    tokens = {}
    reused.clear()
    with offline_llm(kind, speculative_config, block_size=BLOCK, **engine) as llm:
        for round_ in range(ROUNDS):  # later rounds find the pictures in the prefix cache
            convs = shared_picture_conversations(round_)
            outs = llm.chat(list(convs.values()), greedy_params(), use_tqdm=False)
            tokens.update({name: list(o.outputs[0].token_ids) for name, o in zip(convs, outs)})
        metrics = {m.name: getattr(m, "value", None) for m in llm.get_metrics()}
        counters = spec_counters(llm)
    return dict(tokens=tokens, hits=sum(reused),
                preemptions=metrics["vllm:num_preemptions"],
                acceptance_length=1 + counters.get("num_accepted_tokens", 0)
                / max(1, counters.get("num_drafts", 0)))


def expected_tokens(kind: str) -> dict:
    """Greedy tokens without speculation or prefix caching, the rounds in turn in one
    engine as run() sends them; plain_vllm runs it once per target."""
    rounds = [shared_picture_conversations(round_) for round_ in range(ROUNDS)]
    outputs = plain_run(kind, [(list(convs.values()), GREEDY) for convs in rounds],
                        block_size=BLOCK, enable_prefix_caching=False)["outputs"]
    return {name: ids for convs, outs in zip(rounds, outputs)
            for name, (ids, _) in zip(convs, outs)}


def assert_same_tokens(got: dict, expected: dict, label: str) -> None:
    assert got.keys() == expected.keys()
    for name in expected:
        assert got[name] == expected[name], f"{name} differs ({label})"


# Qwen3-VL's M-RoPE positions after a cache hit stand for Qwen2.5-VL's too.
@pytest.mark.parametrize("kind", rows(["llava", "qwen3_vl"], ["qwen2_5_vl"]))
def test_prefix_caching_keeps_output_and_acceptance(kind, reused_tokens):
    expected = expected_tokens(kind)
    cached = run(kind, vispec_config(kind, 3), reused_tokens, enable_prefix_caching=True)
    uncached = run(kind, vispec_config(kind, 3), reused_tokens, enable_prefix_caching=False)
    assert_same_tokens(cached["tokens"], expected, "prefix caching")
    assert_same_tokens(uncached["tokens"], expected, "no prefix caching")
    # Whole blocks of pictures and instructions really came from the cache.
    assert cached["hits"] >= 6 * BLOCK and uncached["hits"] == 0
    print(f"{kind}: prefix cache hits {cached['hits']:.0f} tokens; acceptance length "
          f"{cached['acceptance_length']:.2f} cached vs {uncached['acceptance_length']:.2f}")
    assert cached["acceptance_length"] >= 0.95 * uncached["acceptance_length"]


SCHEDULES = {
    # 12 tokens a step for up to 4 requests: every picture is split across steps.
    "chunked-prefill": dict(max_num_batched_tokens=12, max_num_seqs=4),
    # Ten blocks: two requests fit at admission but not as they grow, so one is preempted
    # and recomputed (from the prefix cache where its blocks survived).
    "preempted": dict(max_model_len=224, num_gpu_blocks_override=10),
}


@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_cached_pictures_survive_chunks_and_preemption(schedule, reused_tokens):
    expected = expected_tokens("llava")
    got = run("llava", vispec_config("llava", 3), reused_tokens, enable_prefix_caching=True,
              **SCHEDULES[schedule])
    assert_same_tokens(got["tokens"], expected, schedule)
    print(f"{schedule}: reused {got['hits']} prompt tokens, {got['preemptions']:.0f} "
          f"preemptions, acceptance length {got['acceptance_length']:.2f}")
    assert got["hits"] >= 6 * BLOCK
    assert (got["preemptions"] > 0) == (schedule == "preempted")
    assert got["acceptance_length"] > 2.0  # k = 3 on a draft trained for this target
