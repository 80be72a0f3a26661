"""When a step drafts a tree, a chain or nothing: vispec's thresholds against vLLM's
dynamic speculation schedule (vLLM's own lookup), the refusal of both at once, the
proposer's choice per step, and DP coordination left alone with one DP rank."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from vllm.v1.spec_decode.dynamic.utils import build_dynamic_sd_schedule_lookup
from vllm.v1.worker.dp_utils import should_skip_dp_coordination

from vllm_vispec.config import validate_options
from vllm_vispec.dp_coordination import without_dp_coordination
from vllm_vispec.proposer import VispecProposer
from vllm_vispec.tree.options import TreeOptions

MAX_NUM_SEQS = 16
SPEC = {"method": "vispec", "model": "x", "num_speculative_tokens": 3}
TREE = {"depth": 2, "top_k": 4, "total_tokens": 11}


def thresholds_as_schedule(options: TreeOptions, chain: int) -> list[list[int]]:
    """The schedule the options' docstring says the thresholds equal."""
    ranges = [[1, options.chain_above_batch, options.num_nodes],
              [options.chain_above_batch + 1, options.off_above_batch, chain],
              [options.off_above_batch + 1, MAX_NUM_SEQS, 0]]
    return [r for r in ranges if r[0] <= r[1]]


@pytest.mark.parametrize("chain_above,off_above", [(1, 8), (1, 1), (4, 16), (2, 30)])
def test_the_thresholds_are_vllms_schedule_written_short(chain_above, off_above):
    options = TreeOptions(**TREE, chain_above_batch=chain_above, off_above_batch=off_above)
    chain = 3
    vllm_k = max(chain, options.num_nodes)  # vLLM's num_speculative_tokens for a tree
    lookup = build_dynamic_sd_schedule_lookup(thresholds_as_schedule(options, chain),
                                              MAX_NUM_SEQS, vllm_k)
    for batch in range(1, MAX_NUM_SEQS + 1):
        assert options.mode_for_tokens(lookup[batch]) == options.mode(batch), batch


def test_a_schedule_and_thresholds_together_are_refused():
    schedule = [[1, 1, 10], [2, 4, 3], [5, 64, 0]]
    for given in ({"chain_above_batch": 2}, {"off_above_batch": 8},
                  {"chain_above_batch": 1, "off_above_batch": 8}):
        with pytest.raises(ValueError, match=r"chain_above_batch|off_above_batch") as e:
            validate_options({**SPEC, "tree": {**TREE, **given},
                              "num_speculative_tokens_per_batch_size": schedule})
        assert "num_speculative_tokens_per_batch_size" in str(e.value)
        assert all(name in str(e.value) for name in given)
    # either one alone is fine, trees or chains
    validate_options({**SPEC, "tree": TREE,
                      "num_speculative_tokens_per_batch_size": schedule})
    validate_options({**SPEC, "tree": {**TREE, "chain_above_batch": 2}})
    validate_options({**SPEC, "num_speculative_tokens_per_batch_size": schedule})


@pytest.mark.parametrize("schedule,why", [
    ([], "must not be empty"),
    ([[2, 8, 3]], "must start at 1"),
    ([[1, 4, 3], [3, 8, 1]], "non-overlapping"),
    ([[1, 4, -1]], ">= 0"),
])
def test_a_malformed_schedule_is_refused_before_the_engine_starts(schedule, why):
    with pytest.raises(ValueError, match=rf"num_speculative_tokens_per_batch_size.*{why}"):
        validate_options({**SPEC, "num_speculative_tokens_per_batch_size": schedule})


def proposer_stand_in(tree: dict | None, schedule: bool, penalties: bool = False):
    """What _drafting_mode reads of a VispecProposer, with two running requests."""
    sampling = SimpleNamespace(no_penalties=not penalties, max_num_logprobs=None,
                               bad_words_token_ids={}, allowed_token_ids_mask=None)
    requests = {r: SimpleNamespace(sampling_params=SimpleNamespace(min_tokens=0, min_p=0.0))
                for r in ("a", "b")}
    runner = SimpleNamespace(input_batch=SimpleNamespace(sampling_metadata=sampling),
                             requests=requests)
    return SimpleNamespace(
        tree_options=TreeOptions(**tree) if tree else None,
        speculative_config=SimpleNamespace(
            uses_dynamic_speculative_decoding=lambda: schedule),
        vispec_runner=runner)


def drafting_mode(stand_in, k: int) -> str:
    return VispecProposer._drafting_mode(stand_in, ["a", "b"], k)


def test_the_scheduled_k_decides_where_a_schedule_is_set():
    nodes = TREE["total_tokens"] - 1
    scheduled = proposer_stand_in(TREE, schedule=True)  # thresholds at their defaults
    assert [drafting_mode(scheduled, k) for k in (nodes, nodes - 1, 1, 0)] == \
        ["tree", "chain", "chain", "off"]
    # tree verification implements plain sampling only: a chain instead
    assert drafting_mode(proposer_stand_in(TREE, True, penalties=True), nodes) == "chain"
    # without a schedule vLLM's K is always its maximum; the batch size decides
    thresholds = proposer_stand_in({**TREE, "chain_above_batch": 1}, schedule=False)
    assert drafting_mode(thresholds, nodes) == "chain"
    assert drafting_mode(proposer_stand_in({**TREE, "chain_above_batch": 2}, False),
                         nodes) == "tree"
    # chains: K = 0 drafts nothing
    chains = proposer_stand_in(None, schedule=True)
    assert [drafting_mode(chains, k) for k in (3, 1, 0)] == ["chain", "chain", "off"]


def test_one_dp_rank_coordinates_as_before():
    @without_dp_coordination
    def skipped(self):
        return should_skip_dp_coordination()

    def proposer(dp: int):
        return SimpleNamespace(vllm_config=SimpleNamespace(
            parallel_config=SimpleNamespace(data_parallel_size=dp)))
    assert skipped(proposer(1)) is False
    assert skipped(proposer(2)) is True
    assert should_skip_dp_coordination() is False  # and only inside the call
