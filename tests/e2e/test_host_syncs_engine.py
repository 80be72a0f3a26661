"""Inside vLLM's engine, vispec's draft passes never wait for the device: the host-sync
counter (vllm_vispec/host_syncs.py, itself tested in tests/unit/test_host_syncs.py) sees
no blocking read in any draft step, for text-only and image prompts, batched, with chunked
prefill splitting images, and with and without vLLM's padded drafter batch."""

from __future__ import annotations

import pytest
from prompts import conversations
from vllm_runs import greedy_params, offline_llm, vispec_config

from vllm_vispec.host_syncs import HostSyncCounter, drafter_of

SCHEDULES = {
    "whole-prefill": ({}, {}),
    "chunked-prefill": (dict(max_num_batched_tokens=12, max_num_seqs=4), {}),
    "chunked-unpadded": (dict(max_num_batched_tokens=12, max_num_seqs=4),
                         {"disable_padded_drafter_batch": True}),
}


@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("kind", ["llava", "qwen2_5_vl"])
def test_no_host_device_sync_inside_draft_passes(kind, schedule):
    engine_args, spec_extra = SCHEDULES[schedule]
    convs = conversations()
    with offline_llm(kind, vispec_config(kind, 3, **spec_extra), **engine_args) as llm:
        drafter = drafter_of(llm)
        with HostSyncCounter(drafter) as counter:
            llm.chat(list(convs.values()), greedy_params(), use_tqdm=False)
    summary = counter.summary()
    assert summary["steps"] >= 10  # the counted region ran: one entry per draft step
    assert all(s["forward_calls"] >= 1 for s in counter.steps)
    assert summary["syncs_max"] == 0, summary
