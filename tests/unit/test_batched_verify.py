"""Batched tree verification on tensors against the host references: ``verify_tree`` for
the walk (greedy and with fixed draws) and for ``TreeStep.verify``, the host chain rule
for the moves, root + depth for node positions, vLLM's top-k/top-p and sampler for the
draws, and no host reads outside ``TreeBatch.from_trees``."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import random
from types import SimpleNamespace

import pytest
import torch

from vllm_vispec.host_syncs import HostSyncCounter
from vllm_vispec.tree import batched_verify as bv
from vllm_vispec.tree.batched_verify import (
    TreeBatch, chain_moves, node_depths, position_shifts, sample_rows, target_draws,
    top_k_top_p_filter, walk_trees)
from vllm_vispec.tree.dynamic_tree import DraftTree
from vllm_vispec.tree.target_step import TreeStep
from vllm_vispec.tree.verify import verify_tree

VOCAB = 6  # small, so that draws often hit a child


# ---- random steps -------------------------------------------------------------------------
def random_tree(rng: random.Random, size: int, breadth_first: bool = True,
                distinct_siblings: bool = True) -> DraftTree:
    parents = [rng.randrange(-1, i) for i in range(size)]
    depths = DraftTree([0] * size, parents).depths()
    order = (sorted(range(size), key=lambda i: (depths[i], i)) if breadth_first
             else list(range(size)))
    index = {old: new for new, old in enumerate(order)}
    parents = [index[parents[i]] if parents[i] >= 0 else -1 for i in order]
    tokens, used = [], {}
    for p in parents:
        free = [t for t in range(VOCAB) if t not in used.get(p, ())] if distinct_siblings \
            else list(range(VOCAB))
        token = rng.choice(free or list(range(VOCAB)))
        used.setdefault(p, set()).add(token)
        tokens.append(token)
    return DraftTree(tokens, parents)


def random_trees(seed: int, num_reqs: int = 9) -> list[DraftTree | None]:
    """No tree, an empty tree, a chain, breadth-first trees, a parents-first (not
    breadth-first) tree and one with repeated sibling tokens."""
    rng = random.Random(seed)
    trees: list[DraftTree | None] = [None, DraftTree([], []),
                                     DraftTree.chain([rng.randrange(VOCAB) for _ in range(5)]),
                                     random_tree(rng, 7, breadth_first=False),
                                     random_tree(rng, 8, distinct_siblings=False)]
    trees += [random_tree(rng, rng.randint(1, 10)) for _ in range(num_reqs - len(trees))]
    rng.shuffle(trees)
    return trees


def steering_logits(trees, seed: int, bias: float = 6.0) -> torch.Tensor:
    """Random logits whose top token is, at most rows, a child of the row's node."""
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    rows = []
    for tree in trees:
        tree = tree or DraftTree([], [])
        for node in range(-1, len(tree)):
            row = torch.randn(VOCAB, generator=g)
            children = list(tree.children(node))
            if children and rng.random() < 0.8:
                row[rng.choice(children)] += bias
            rows.append(row)
    return torch.stack(rows)


def reference_verdicts(trees, draw_rows):
    """``verify_tree`` per request; ``draw_rows(r)(i)`` is request r's draw at row i."""
    return [verify_tree(t or DraftTree([], []), draw_rows(r)) for r, t in enumerate(trees)]


def assert_walk_is(walk, verdicts, width):
    for r, v in enumerate(verdicts):
        depth = walk.accepted.shape[1]
        assert walk.accepted[r].tolist() == v.accepted_nodes + [-1] * (depth - v.num_accepted)
        assert int(walk.num_accepted[r]) == v.num_accepted
        assert walk.sampled[r].tolist() == v.tokens + [-1] * (width - len(v.tokens))
    assert walk.sampled.dtype == torch.int32


def tree_step(trees, prefix: int = 2) -> tuple[TreeStep, list[int]]:
    """The host TreeStep of these trees (each request schedules ``prefix`` tokens before
    its root) and each request's root row."""
    spec, stored, req_ids, query_start_loc, root_rows = {}, {}, [], [0], []
    for index, tree in enumerate(trees):
        req_id = f"r{index}"
        req_ids.append(req_id)
        n = len(tree) if tree is not None else 0
        if n:
            spec[req_id], stored[req_id] = [-1] * n, tree
        root_rows.append(query_start_loc[-1] + prefix)
        query_start_loc.append(root_rows[-1] + n + 1)
    num_tokens = query_start_loc[-1]
    step = TreeStep.build(spec, stored, req_ids, query_start_loc,
                          torch.arange(num_tokens) + 1000,
                          torch.zeros(len(trees), 1, dtype=torch.int32), torch.arange(num_tokens))
    assert step is not None and [r.root_row for r in step.requests] == [
        root_rows[i] for i, t in enumerate(trees) if t is not None and len(t)]
    return step, root_rows


# ---- TreeBatch ----------------------------------------------------------------------------
def test_from_trees_pads_and_indexes_rows():
    trees = [DraftTree([5, 6, 7], [-1, -1, 1]), None, DraftTree.chain([3])]
    b = TreeBatch.from_trees(trees, "cpu", root_rows=[0, 6, 9])
    assert b.tokens.tolist() == [[5, 6, 7], [-1, -1, -1], [3, -1, -1]]
    assert b.parents.tolist() == [[-1, -1, 1], [-2, -2, -2], [-1, -2, -2]]
    assert b.sizes.tolist() == [3, 0, 1] and b.first_row.tolist() == [0, 4, 5]
    assert b.row_request.tolist() == [0, 0, 0, 0, 1, 2, 2]
    assert b.root_rows.tolist() == [0, 6, 9]
    assert (b.max_nodes, b.max_depth, b.num_rows) == (3, 2, 7)
    empty = TreeBatch.from_trees([None, None], "cpu")
    assert (empty.max_nodes, empty.max_depth, empty.num_rows) == (0, 0, 2)
    assert empty.root_rows is None


def test_from_trees_uploads_once(monkeypatch):
    copies = []
    real_to = torch.Tensor.to

    def counting_to(self, *args, **kwargs):
        copies.append(kwargs.get("non_blocking"))
        return real_to(self, *args, **kwargs)
    monkeypatch.setattr(torch.Tensor, "to", counting_to)
    TreeBatch.from_trees(random_trees(0), "cpu", root_rows=list(range(9)))
    assert copies == [True]


# ---- the walk against verify_tree ---------------------------------------------------------
@pytest.mark.parametrize("seed", range(6))
def test_greedy_walk_equals_verify_tree(seed):
    trees = random_trees(seed)
    batch = TreeBatch.from_trees(trees, "cpu")
    logits = steering_logits(trees, seed)
    width = batch.max_nodes + 2
    walk = walk_trees(batch, target_draws(logits, batch, None), width)
    argmax = logits.argmax(-1).tolist()
    first = batch.first_row.tolist()
    verdicts = reference_verdicts(trees, lambda r: lambda i: argmax[first[r] + i])
    assert_walk_is(walk, verdicts, width)
    assert sum(v.num_accepted for v in verdicts) >= 5  # the trees were walked into


@pytest.mark.parametrize("seed", range(6))
def test_walk_with_fixed_draws_equals_verify_tree(seed):
    trees = random_trees(seed + 100)
    batch = TreeBatch.from_trees(trees, "cpu")
    g = torch.Generator().manual_seed(seed)
    draws = torch.randint(0, VOCAB, (len(trees), batch.max_nodes + 1), generator=g)
    walk = walk_trees(batch, draws, width=12)
    verdicts = reference_verdicts(trees, lambda r: lambda i: int(draws[r, i]))
    assert_walk_is(walk, verdicts, 12)


def test_sampled_walk_equals_verify_tree_fed_the_same_draws():
    trees = random_trees(7)
    batch = TreeBatch.from_trees(trees, "cpu")
    logits = steering_logits(trees, 7, bias=3.0)
    temperature = torch.tensor([0.0, 0.7, 1.0, 1.3, 0.0, 0.9, 1.0, 0.5, 2.0])
    generators = {1: torch.Generator().manual_seed(3), 4: torch.Generator().manual_seed(4)}
    draws = target_draws(logits, batch, temperature, torch.full((9,), 4), None, generators)
    walk = walk_trees(batch, draws, width=12)
    assert_walk_is(walk, reference_verdicts(trees, lambda r: lambda i: int(draws[r, i])), 12)
    for r in (0, 4):  # greedy requests draw the argmax
        rows = slice(int(batch.first_row[r]), int(batch.first_row[r] + batch.sizes[r]) + 1)
        assert draws[r, :rows.stop - rows.start].tolist() == logits[rows].argmax(-1).tolist()


def host_chain_rows(root_rows, accepted_lists):
    """The host rule, row by row: node ``i`` sits at row ``root + i + 1`` and its place on
    the chain at depth ``d`` is row ``root + d``."""
    dst, src = [], []
    for root, accepted in zip(root_rows, accepted_lists):
        for depth, node in enumerate(accepted, start=1):
            if node + 1 != depth:
                dst.append(root + depth)
                src.append(root + node + 1)
    return dst, src


def test_greedy_tree_step_equals_verify_tree_and_the_host_chain_rule():
    trees = random_trees(11)
    step, root_rows = tree_step(trees)
    logits = steering_logits(trees, 11)
    meta = SimpleNamespace(temperature=None, top_k=None, top_p=None, generators={})
    max_spec_len = max(len(t) for t in trees if t is not None)
    sampled = step.verify(logits, meta, max_spec_len)

    argmax = logits.argmax(-1).tolist()
    first = step.batch.first_row.tolist()
    verdicts = reference_verdicts(trees, lambda r: lambda i: argmax[first[r] + i])
    width = max_spec_len + 1
    assert sampled.tolist() == [v.tokens + [-1] * (width - len(v.tokens)) for v in verdicts]

    # The accepted paths laid out as chains: the host rule row by row, and the moves.
    x = torch.randn(step.num_tokens, 3)
    expected = x.clone()
    host_dst, host_src = host_chain_rows(root_rows, [v.accepted_nodes for v in verdicts])
    assert host_dst  # something moved
    for d, src_row in zip(host_dst, host_src):
        expected[d] = expected[src_row].clone()
    dst, src = step.chain_moves()
    assert dst.shape == (len(trees) * step.batch.max_depth,)
    x[dst] = x[src].clone()
    assert torch.equal(x, expected)


@pytest.mark.parametrize("seed", range(5))
def test_chain_moves_write_each_row_once(seed):
    trees = random_trees(seed + 200)
    step, root_rows = tree_step(trees, prefix=0)  # requests' rows adjoin
    batch = TreeBatch.from_trees(trees, "cpu", root_rows=root_rows)
    g = torch.Generator().manual_seed(seed)
    draws = torch.randint(0, VOCAB, (len(trees), batch.max_nodes + 1), generator=g)
    walk = walk_trees(batch, draws, width=12)
    dst, src = chain_moves(walk.accepted, batch.root_rows)
    moves = [(d, s) for d, s in zip(dst.tolist(), src.tolist()) if d != s]
    identity = {d for d, s in zip(dst.tolist(), src.tolist()) if d == s}
    targets = [d for d, _ in moves]
    assert len(targets) == len(set(targets))  # no row gets two values
    assert not identity & set(targets)  # a self-copy never races a real move
    # Same result as the host rule.
    accepted = [[n for n in row if n >= 0] for row in walk.accepted.tolist()]
    assert sorted(moves) == sorted(zip(*host_chain_rows(root_rows, accepted)))


def test_padding_never_matches():
    # Request 0 has one node; its padding carries the drawn token under the root and
    # under node 0, request 1's padding too: a walk that read padding would accept it.
    trees = [DraftTree([4], [-1]), DraftTree([1, 2], [-1, 0]), None]
    batch = TreeBatch.from_trees(trees, "cpu")
    draws = torch.tensor([[4, 3, 9], [1, 2, 3], [3, 9, 9]])
    leaky = dataclasses.replace(batch, tokens=torch.tensor([[4, 3], [1, 2], [3, 3]]),
                                parents=torch.tensor([[-1, 0], [-1, 0], [-1, -1]]))
    for b in (batch, leaky):
        walk = walk_trees(b, draws, width=4)
        assert walk.sampled.tolist() == [[4, 3, -1, -1], [1, 2, 3, -1], [3, -1, -1, -1]]
        assert walk.accepted.tolist() == [[0, -1], [0, 1], [-1, -1]]
    # Rows past a request's own rows are never drawn from the next request's logits.
    logits = torch.zeros(batch.num_rows, VOCAB)
    draws = target_draws(logits, batch, None)
    assert draws.tolist() == [[0, 0, -1], [0, 0, 0], [0, -1, -1]]


def test_width_must_hold_the_deepest_path():
    batch = TreeBatch.from_trees([DraftTree.chain([1, 2, 3])], "cpu")
    with pytest.raises(ValueError, match="depth 3"):
        walk_trees(batch, torch.zeros(1, 4, dtype=torch.int64), width=3)


# ---- depths and positions -----------------------------------------------------------------
@pytest.mark.parametrize("seed", range(4))
def test_depths_and_position_shifts_equal_the_host_rule(seed):
    trees = random_trees(seed + 300)
    step, root_rows = tree_step(trees)
    batch = TreeBatch.from_trees(trees, "cpu", root_rows=root_rows)
    depths = node_depths(batch)
    for r, tree in enumerate(trees):
        n = len(tree) if tree is not None else 0
        want = (tree.depths() if n else []) + [0] * (batch.max_nodes - n)
        assert depths[r].tolist() == want
    # The host rule: node i of a tree (row root + 1 + i) sits at root + depth(i).
    positions = torch.arange(step.num_tokens) + 1000
    want = positions.clone()
    for root, tree in zip(root_rows, trees):
        for i, depth in enumerate(tree.depths() if tree is not None else []):
            want[root + 1 + i] = positions[root] + depth
    assert torch.equal(positions - position_shifts(batch, step.num_tokens), want)
    step.set_positions(positions)  # the step applies exactly these shifts
    assert torch.equal(positions, want)


# ---- the draws ----------------------------------------------------------------------------
def test_filter_equals_vllms_top_k_top_p():
    from vllm.v1.sample.ops.topk_topp_sampler import (
        apply_top_k_top_p, apply_top_k_top_p_pytorch)
    g = torch.Generator().manual_seed(0)
    # Integer-valued logits: ties at the k-th value and in the top-p cut.
    logits = torch.randint(-3, 4, (64, 20), generator=g).float() / 2
    logits[32:] = torch.randn(32, 20, generator=g)
    k = torch.randint(1, 21, (64,), generator=g, dtype=torch.int32)
    p = torch.rand(64, generator=g) * 0.9 + 0.1
    for kk, pp in ((k, p), (k, None), (None, p), (None, None)):
        ours = top_k_top_p_filter(logits.clone(), kk, pp)
        assert torch.equal(ours, apply_top_k_top_p_pytorch(logits.clone(), kk, pp))
        assert torch.equal(ours, apply_top_k_top_p(logits.clone(), kk, pp))


def test_one_row_requests_sample_like_vllms_sampler():
    """Requests without drafts and with their own generators: vLLM's sampler's exact draws."""
    from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p, random_sample
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 50, generator=g)
    temperature = torch.tensor([0.5, 1.0, 1.5, 0.8, 1.0, 2.0])
    k = torch.tensor([5, 50, 10, 50, 3, 20], dtype=torch.int32)
    p = torch.tensor([1.0, 0.9, 0.7, 1.0, 1.0, 0.5])
    batch = TreeBatch.from_trees([None] * 6, "cpu")

    def gens():
        return {i: torch.Generator().manual_seed(10 + i) for i in range(6)}
    probs = apply_top_k_top_p(logits / temperature[:, None], k, p).softmax(-1, torch.float32)
    want = random_sample(probs, gens())
    assert torch.equal(sample_rows(logits, batch, temperature, k, p, gens()), want)


def test_draw_marginals_match_filtered_softmax():
    """Per row, the draws' frequencies against softmax(filter(logits / T)), over 20000
    draws each: total variation below 0.025 (seeded), and never a filtered-out token.
    Half the requests of one configuration draw from their own generators."""
    from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p_pytorch
    configs = [(0.7, 4, 1.0), (1.0, 10, 0.8), (1.5, 3, 0.9), (0.0, 10, 1.0)]  # (T, k, p)
    copies, size, vocab, calls = 250, 4, 10, 80
    g = torch.Generator().manual_seed(5)
    base = torch.randn(len(configs), size + 1, vocab, generator=g) * 1.5
    base[1, 1] = base[1, 0]  # two rows of one request with the same distribution
    trees = [DraftTree.chain([0] * size)] * (len(configs) * copies)
    batch = TreeBatch.from_trees(trees, "cpu")
    logits = base.repeat(copies, 1, 1).flatten(0, 1)  # request r uses config r % 4
    temperature = torch.tensor([c[0] for c in configs]).repeat(copies)
    top_k = torch.tensor([c[1] for c in configs]).repeat(copies)
    top_p = torch.tensor([c[2] for c in configs]).repeat(copies)
    seeded = torch.arange(0, copies, 2)
    generators = {4 * c + 1: torch.Generator().manual_seed(c) for c in seeded.tolist()}
    torch.manual_seed(0)
    counts = torch.zeros(len(configs), size + 1, vocab)
    same = torch.zeros(copies)
    for _ in range(calls):
        draws = target_draws(logits, batch, temperature, top_k, top_p, generators).view(
            copies, len(configs), size + 1)
        counts += torch.nn.functional.one_hot(draws, vocab).sum(0)
        same += draws[:, 1, 0] == draws[:, 1, 1]
    n = copies * calls
    for c, (t, k, p) in enumerate(configs):
        if t == 0.0:
            assert torch.equal(counts[c].argmax(-1), base[c].argmax(-1))
            assert torch.equal(counts[c].amax(-1), torch.full((size + 1,), float(n)))
            continue
        filtered = apply_top_k_top_p_pytorch(base[c] / t, torch.full((size + 1,), k),
                                             torch.full((size + 1,), p))
        want = filtered.softmax(-1)
        freq = counts[c] / n
        assert (freq[want == 0] == 0).all()
        tv = (freq - want).abs().sum(-1) / 2
        assert tv.max() < 0.025, tv
    # Rows of one request draw independently: P(row 0 == row 1) = sum_v p(v)^2, with and
    # without a generator (10000 pairs each; standard deviation about 0.005).
    probs = apply_top_k_top_p_pytorch(base[1, :1], torch.tensor([10]),
                                      torch.tensor([0.8])).softmax(-1)[0]
    unseeded = torch.arange(1, copies, 2)
    for group in (seeded, unseeded):
        rate = same[group].sum() / (len(group) * calls)
        assert abs(rate - (probs ** 2).sum()) < 0.02, rate


def test_seeded_generators_reproduce():
    trees = random_trees(21)
    batch = TreeBatch.from_trees(trees, "cpu")
    logits = steering_logits(trees, 21, bias=1.0)
    temperature = torch.ones(len(trees))

    def run(global_seed):
        torch.manual_seed(global_seed)
        gens = {r: torch.Generator().manual_seed(r) for r in (0, 3, 6)}
        return target_draws(logits, batch, temperature, None, None, gens)
    a, b = run(0), run(1)
    seeded = [0, 3, 6]
    assert torch.equal(a[seeded], b[seeded])
    unseeded = [r for r in range(len(trees)) if r not in seeded]
    assert not torch.equal(a[unseeded], b[unseeded])


# ---- no host reads ------------------------------------------------------------------------
class Verification:
    """A step's verification, end to end after the upload: the counted region."""

    def run(self, logits, batch, temperature, top_k, top_p, generators, width, num_tokens):
        draws = target_draws(logits, batch, temperature, top_k, top_p, generators)
        walk = walk_trees(batch, draws, width)
        dst, src = chain_moves(walk.accepted, batch.root_rows)
        return walk, dst, src, position_shifts(batch, num_tokens)


def test_verification_reads_nothing_on_the_host():
    trees = random_trees(31)
    step, root_rows = tree_step(trees)
    batch = TreeBatch.from_trees(trees, "cpu", root_rows=root_rows)
    logits = steering_logits(trees, 31)
    temperature = torch.tensor([0.0, 0.7, 1.0, 1.3, 0.0, 0.9, 1.0, 0.5, 2.0])
    top_k = torch.full((9,), 4, dtype=torch.int32)
    top_p = torch.full((9,), 0.9)
    with HostSyncCounter(targets=[(Verification, "run")], cpu_is_device=True) as counter:
        Verification().run(logits, batch, temperature, top_k, top_p,
                           {2: torch.Generator().manual_seed(0)}, 12, step.num_tokens)
        Verification().run(logits, batch, None, None, None, {}, 12, step.num_tokens)
    assert [s["syncs"] for s in counter.steps] == [0, 0], counter.steps


def test_module_has_no_host_reads_outside_the_upload():
    tree = ast.parse(inspect.getsource(bv))
    banned = {"item", "tolist", "cpu", "numpy"}
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.FunctionDef) or fn.name == "from_trees":
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                name = node.func.attr
                assert name not in banned, f"{fn.name} calls .{name}()"
                assert not (name in ("tensor", "as_tensor")
                            and getattr(node.func.value, "id", None) == "torch"), fn.name
            if (isinstance(node, ast.Call) and getattr(node.func, "id", None) in (
                    "int", "float", "bool")
                    and not all(isinstance(a, ast.Constant) for a in node.args)):
                raise AssertionError(f"{fn.name} converts a value with {node.func.id}()")
