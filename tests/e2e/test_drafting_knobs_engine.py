"""vLLM's two knobs around vispec's tree / chain / off steps, inside one in-process engine
(tiny LLaVA, a few tokens):

- vLLM's dynamic speculation schedule reaches the drafter through vLLM's scheduler and
  decides each step: the tree where the scheduled K reaches the tree's node count, a
  chain below that, nothing at K = 0;
- under data parallelism every rank makes the same number of DP batch all-reduces per
  draft step whatever it drafts, and per idle step (dummy_run). No second DP rank runs
  here: the drafter alone is told there are two ranks of a MoE target (where vLLM keeps
  DP ranks in lock step), and vLLM's ``coordinate_batch_across_dp`` is replaced, in the
  modules that call it, by a stand-in that records whether the call would all-reduce
  (vLLM's ``skip_dp_coordination`` not in effect) and answers as vLLM does without one.
"""

from __future__ import annotations

import copy

import pytest
import torch
from prompts import conversations
from vllm_runs import offline_llm, vispec_config

from vllm_vispec.host_syncs import drafter_of

TREE = {"depth": 2, "top_k": 2, "total_tokens": 5}  # 4 nodes: vLLM's K at most 4
CHAIN = 2
# One request: a chain of 2; two: the tree; three or more: nothing (not the thresholds'
# order, so that neither chain_above_batch nor off_above_batch could produce it).
SCHEDULE = [[1, 1, CHAIN], [2, 2, 4], [3, 8, 0]]
BATCHES = (["one_image"], ["text", "two_images"], ["text_parts", "one_image",
                                                   "one_image_after_text"])
# Where the drafter's DP coordination comes from: vLLM's proposer, and the forward
# context (a MoE target's pass that comes without the agreed sizes).
DP_CALLERS = ("vllm.v1.spec_decode.llm_base_proposer", "vllm.forward_context")
MODE_OF_BATCH = {1: "chain", 2: "tree", 3: "off"}
DRAFTED = {"chain": CHAIN, "tree": TREE["total_tokens"] - 1, "off": 0}


class DPStandIn:
    """``coordinate_batch_across_dp`` without other ranks: records each call."""

    def __init__(self):
        self.calls: list[bool] = []  # per call: would it all-reduce

    def __call__(self, num_tokens_unpadded, allow_microbatching, parallel_config,
                 num_tokens_padded=None, uniform_decode=None, cudagraph_mode=0):
        from vllm.v1.worker.dp_utils import should_skip_dp_coordination
        self.calls.append(not should_skip_dp_coordination())
        n = num_tokens_padded if num_tokens_padded is not None else num_tokens_unpadded
        across = torch.full((parallel_config.data_parallel_size,), n, dtype=torch.int32)
        return False, across, cudagraph_mode


def as_dp_rank_of_two(drafter) -> None:
    """The drafter alone sees two DP ranks of a MoE target; the runner and the rest of
    the engine keep their one rank."""
    config = copy.copy(drafter.vllm_config)
    config.parallel_config = copy.copy(config.parallel_config)
    config.parallel_config.data_parallel_size = 2
    config.parallel_config.is_moe_model = True
    drafter.vllm_config = config


def record_calls(drafter, dp: DPStandIn, records: list[dict]) -> None:
    """Wraps the drafter's propose and dummy_run (on the instance) to record, per call,
    the scheduled K, the mode, the drafts' shape, the DP calls and the draft passes."""
    passes = [0]
    drafter.model.register_forward_hook(lambda *_: passes.__setitem__(0, passes[0] + 1))

    def recorded(kind, method):
        def call(*args, **kwargs):
            dp_before, passes[0] = len(dp.calls), 0
            modes_before = dict(drafter.mode_counts)
            out = method(*args, **kwargs)
            record = dict(kind=kind, dp_calls=dp.calls[dp_before:], passes=passes[0])
            if kind == "propose":
                record.update(k=kwargs["num_speculative_tokens"], batch=out.shape[0],
                              drafted=out.shape[1],
                              mode=next(m for m in modes_before
                                        if drafter.mode_counts[m] != modes_before[m]))
            records.append(record)
            return out
        return call

    drafter.propose = recorded("propose", drafter.propose)
    drafter.dummy_run = recorded("dummy_run", drafter.dummy_run)


@pytest.fixture(scope="module")
def records():
    from vllm import SamplingParams
    convs = conversations()
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    spec = vispec_config("llava", CHAIN, tree=TREE,
                         num_speculative_tokens_per_batch_size=SCHEDULE)
    dp, out = DPStandIn(), []
    with offline_llm("llava", spec) as llm, pytest.MonkeyPatch.context() as patch:
        for module in DP_CALLERS:
            patch.setattr(f"{module}.coordinate_batch_across_dp", dp)
        drafter = drafter_of(llm)
        as_dp_rank_of_two(drafter)
        record_calls(drafter, dp, out)
        for names in BATCHES:
            llm.chat([convs[n] for n in names], params, use_tqdm=False)
            drafter.dummy_run(1)  # what an idle rank runs meanwhile
    return out


def test_the_schedule_decides_each_step(records):
    proposals = [r for r in records if r["kind"] == "propose"]
    assert {r["batch"] for r in proposals} == set(MODE_OF_BATCH)
    for r in proposals:
        # K as vLLM's scheduler looked it up for the step's batch, then what was drafted
        assert r["k"] == SCHEDULE[r["batch"] - 1][2], r
        assert r["mode"] == MODE_OF_BATCH[r["batch"]], r
        assert r["drafted"] == DRAFTED[r["mode"]], r


def test_every_rank_makes_the_same_dp_collectives_whatever_it_drafts(records):
    proposals = [r for r in records if r["kind"] == "propose"]
    idle = [r for r in records if r["kind"] == "dummy_run"]
    assert {r["mode"] for r in proposals} == {"tree", "chain", "off"} and len(idle) == 3
    # vLLM's DP coordination was consulted in every call (the stand-in is in place) ...
    assert all(r["dp_calls"] for r in records)
    # ... and every draft step and idle step makes the same number of all-reduces.
    collectives = {(r["kind"], r.get("mode")): sum(r["dp_calls"]) for r in records}
    assert len(set(collectives.values())) == 1, collectives


def test_idle_steps_do_not_depend_on_the_last_step(records):
    """dummy_run runs as many draft passes after a tree step as after a chain or an off
    step (propose leaves the last step's K behind, 1 after a tree's first pass)."""
    idle = [r["passes"] for r in records if r["kind"] == "dummy_run"]
    assert len(set(idle)) == 1 and idle[0] == max(CHAIN, TREE["depth"] + 1), idle
