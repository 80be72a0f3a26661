"""The target side of tree verification, piece by piece: the CPU KV layout it reads, node
positions, verification from logits, and laying the accepted path out as a chain."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from vllm_vispec.tree.dynamic_tree import DraftTree
from vllm_vispec.tree.target_kv import cpu_target_kv_views
from vllm_vispec.tree.target_step import TreeStep


@pytest.mark.parametrize("isa,block_size,dtype", [("vec", 32, torch.float32),
                                                  ("vec", 32, torch.bfloat16),
                                                  ("vec16", 16, torch.float32)])
def test_cpu_layout_matches_vllms_cache_writer(isa, block_size, dtype):
    from vllm import _custom_ops as ops
    blocks, heads, head_dim = 3, 2, 64
    cache = torch.zeros(blocks, heads, block_size, 2 * head_dim, dtype=dtype)
    kv = cache.view(blocks, heads, 2 * block_size, head_dim)
    key_cache, value_cache = kv.chunk(2, dim=2)
    g = torch.Generator().manual_seed(0)
    key = torch.randn(20, heads, head_dim, generator=g).to(dtype)
    value = torch.randn(20, heads, head_dim, generator=g).to(dtype)
    slots = torch.randperm(blocks * block_size, generator=g)[:20]
    ops.cpu_attn_reshape_and_cache(key, value, key_cache, value_cache, slots, isa)
    keys, values = cpu_target_kv_views(cache, isa)
    assert torch.equal(keys[slots // block_size, slots % block_size], key)
    assert torch.equal(values[slots // block_size, slots % block_size], value)


def test_unknown_cpu_layout_is_refused():
    with pytest.raises(NotImplementedError, match="amx"):
        cpu_target_kv_views(torch.zeros(1, 1, 32, 128), "amx")


def two_request_step():
    # Request 0: prefill, no drafts (3 tokens). Request 1: root + a 4-node tree.
    # Request 2: root + a 2-node chain.
    spec = {"b": [11, 12, 13, 14], "c": [21, 22]}
    trees = {"b": DraftTree([11, 12, 13, 14], [-1, -1, 0, 2])}
    positions = torch.tensor([0, 1, 2, 40, 41, 42, 43, 44, 7, 8, 9])
    slots = torch.arange(100, 111)
    step = TreeStep.build(spec, trees, ["a", "b", "c"], [0, 3, 8, 11], positions,
                          torch.zeros(3, 4, dtype=torch.int32), slots)
    return step, positions


def test_build_and_positions():
    step, positions = two_request_step()
    assert [(r.index, r.root_row, r.logits_row) for r in step.requests] == [
        (1, 3, 1), (2, 8, 6)]
    step.set_positions(positions)
    # Tree nodes at root + depth; the chain keeps its sequential positions.
    assert positions.tolist() == [0, 1, 2, 40, 41, 41, 42, 43, 7, 8, 9]
    # A step of chains only is left to vLLM.
    assert TreeStep.build({"c": [21, 22]}, {}, ["c"], [0, 3], positions,
                          torch.zeros(1, 4, dtype=torch.int32), torch.arange(3)) is None


def test_greedy_verification_and_chain_layout():
    step, _ = two_request_step()
    # Logits rows: a: 0; b: root 1, node i at 2 + i; c: root 6, node i at 7 + i.
    logits = torch.zeros(9, 32)
    # a samples 5. b: the root picks 12 = node 1, a leaf; node 1's row picks 30.
    # c: the root picks 21 = node 0; node 0's row picks 3, not node 1's 22.
    for row, token in {0: 5, 1: 12, 3: 30, 6: 21, 7: 3}.items():
        logits[row, token] = 1.0
    meta = SimpleNamespace(temperature=None, top_k=None, top_p=None, generators={})
    out = step.verify(logits, meta, max_spec_len=4)
    assert out.tolist() == [[5, -1, -1, -1, -1], [12, 30, -1, -1, -1], [21, 3, -1, -1, -1]]
    # b's node 1 (step row 5) is accepted at depth 1 (row 4); c's node 0 is in place.
    rows = torch.arange(11)
    dst, src = step.chain_moves()
    rows[dst] = rows[src].clone()
    assert rows.tolist() == [0, 1, 2, 3, 5, 5, 6, 7, 8, 9, 10]


def test_move_kv_copies_accepted_slots():
    step, _ = two_request_step()
    # Accepted: b's nodes 0, 2, 3 (rows 4, 6, 7), c's node 0; a has no tree.
    step.walk = SimpleNamespace(accepted=torch.tensor([[-1, -1, -1], [0, 2, 3],
                                                       [0, -1, -1]]))
    rows = torch.arange(11)
    dst, src = step.chain_moves()
    rows[dst] = rows[src].clone()
    assert rows.tolist() == [0, 1, 2, 3, 4, 6, 7, 7, 8, 9, 10]
    blocks, heads, block_size, head_dim = 8, 1, 16, 64
    cache = torch.randn(blocks, heads, block_size, 2 * head_dim)
    keys, values = cpu_target_kv_views(cache, "vec16")
    step.slot_mapping = torch.tensor([0, 1, 2, 17, 18, 19, 20, 21, 40, 41, 42])
    want_k = keys[1, [4, 5]].clone()  # slots 20, 21: nodes 2 and 3
    step.move_kv([cpu_target_kv_views(cache, "vec16")])
    assert torch.equal(keys[1, [3, 4]], want_k)


def test_tree_tokens_come_from_the_drafter_not_the_scheduler():
    # Under async scheduling vLLM's scheduler holds placeholders (-1) for draft tokens.
    trees = {"b": DraftTree([11, 12, 13, 14], [-1, -1, 0, 2])}
    positions = torch.tensor([40, 41, 42, 43, 44])
    step = TreeStep.build({"b": [-1, -1, -1]}, trees, ["b"], [0, 4], positions,
                          torch.zeros(1, 4, dtype=torch.int32), torch.arange(4))
    (request,) = step.requests
    # The scheduler cut the tree to 3 nodes: the drafter's first 3, breadth first.
    assert request.tree.tokens == [11, 12, 13] and request.tree.parents == [-1, -1, 0]


def test_a_tree_step_reads_nothing_back_after_it_is_built(monkeypatch):
    """Positions, verification (greedy and sampled with vLLM's top-k), the accepted paths'
    moves: no host-device sync (CPU tensors stand for device ones)."""
    from vllm.v1.sample.ops import topk_topp_sampler as vllm_topk

    from vllm_vispec.host_syncs import HostSyncCounter
    # vLLM's top-k/top-p as on a GPU (its CPU build picks a variant that reads k back).
    monkeypatch.setattr(vllm_topk, "apply_top_k_top_p",
                        lambda logits, k, p: vllm_topk.apply_top_k_top_p_pytorch(
                            logits, k, p, allow_cpu_sync=False))
    targets = [(TreeStep, name) for name in ("set_positions", "verify", "chain_moves",
                                             "move_kv")]
    cache = torch.randn(8, 1, 16, 2 * 64)
    for meta in (SimpleNamespace(temperature=None, top_k=None, top_p=None, generators={}),
                 SimpleNamespace(temperature=torch.tensor([0.0, 1.0, 0.7]),
                                 top_k=torch.tensor([4, 4, 4]), top_p=None,
                                 generators={1: torch.Generator().manual_seed(0)})):
        step, positions = two_request_step()
        with HostSyncCounter(targets=targets, cpu_is_device=True) as counter:
            step.set_positions(positions)
            step.verify(torch.randn(9, 32), meta, max_spec_len=4)
            step.move_kv([cpu_target_kv_views(cache, "vec16")])
        assert counter.steps and all(s["syncs"] == 0 for s in counter.steps), counter.steps
