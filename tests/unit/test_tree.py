"""Dynamic trees: options, growth (EAGLE-2 selection) and lossless verification."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from vllm_vispec.tree.dynamic_tree import DraftTree, TreeGrowth
from vllm_vispec.tree.options import TreeOptions
from vllm_vispec.tree.verify import greedy_verdict, verify_tree

VOCAB = 6


def table_logprobs(prefix: tuple[int, ...], seed: int) -> torch.Tensor:
    """A fixed draft: log-probabilities after any prefix, from a hash of the prefix."""
    g = torch.Generator().manual_seed(hash((seed,) + prefix) % (2**31))
    return torch.randn(VOCAB, generator=g).mul(2).log_softmax(-1)


def grow(seeds, options: TreeOptions):
    """Grows trees the way the proposer does, driven by the options alone."""
    growth = TreeGrowth.start(torch.stack([table_logprobs((), s) for s in seeds]),
                              options.top_k)
    for _ in range(options.expansions):
        prefixes = [[path_of(growth, b, int(c)) for c in growth.frontier[b]]
                    for b in range(len(seeds))]
        growth.extend(torch.stack([torch.stack([table_logprobs(p, s) for p in row])
                                   for row, s in zip(prefixes, seeds)]))
    return growth.select(options.num_nodes)


def path_of(growth, b, c):
    tokens = []
    while c >= 0:
        tokens.append(int(growth.tokens[b, c]))
        c = int(growth.parents[b, c])
    return tuple(reversed(tokens))


def upstream_tree(seed, depth, top_k, total_token):
    """EAGLE-2's dynamic tree by enumeration, written from the rules of EAGLE-2's and
    ViSpec's code: the root's top_k children form the first level; then ``depth`` times
    the top_k best of the last level (cumulative log-probability) are expanded into their
    top_k children; finally the ``total_token - 1`` best of all candidates are kept (the
    verified tree is those plus the root: ``total_token`` tokens)."""
    def score(path):
        return sum(float(table_logprobs(path[:i], seed)[path[i]]) for i in range(len(path)))

    def children(path):
        return [path + (int(t),) for t in table_logprobs(path, seed).topk(top_k).indices]
    level = children(())
    candidates = list(level)
    for _ in range(depth):
        frontier = sorted(level, key=score, reverse=True)[:top_k]
        level = [c for p in frontier for c in children(p)]
        candidates += level
    return set(sorted(candidates, key=score, reverse=True)[:total_token - 1])


def paths(tree: DraftTree):
    out = set()
    for i in range(len(tree)):
        tokens, node = [], i
        while node >= 0:
            tokens.append(tree.tokens[node])
            node = tree.parents[node]
        out.add(tuple(reversed(tokens)))
    return out


@pytest.mark.parametrize("depth,top_k,total", [(2, 3, 9), (1, 4, 11), (3, 2, 8), (1, 5, 4)])
def test_growth_matches_the_upstream_enumeration(depth, top_k, total):
    seeds = [0, 1, 2]
    trees = grow(seeds, TreeOptions.parse({"depth": depth, "top_k": top_k,
                                           "total_tokens": total}))
    for tree, seed in zip(trees, seeds):
        assert len(tree) == total - 1
        assert paths(tree) == upstream_tree(seed, depth, top_k, total)
        assert max(tree.depths()) <= depth + 1
        # Breadth first, parents before children.
        assert tree.depths() == sorted(tree.depths())


def test_the_papers_tree_has_four_levels_and_29_nodes():
    # ViSpec's and EAGLE-2's setting: depth 3, top_k 8, total_token 30. VOCAB is too small
    # for top_k 8, so the draft here has a wider vocabulary.
    options = TreeOptions.parse({"depth": 3, "top_k": 8, "total_tokens": 30})
    assert (options.expansions, options.num_nodes) == (3, 29)
    global VOCAB
    saved, VOCAB = VOCAB, 16
    try:
        (tree,) = grow([7], options)
        want = upstream_tree(7, 3, 8, 30)
    finally:
        VOCAB = saved
    assert len(tree) == 29 and paths(tree) == want
    # Four levels can be drafted (a chain of very likely tokens reaches the last one).
    assert max(len(p) for p in want) <= 4


def test_draft_tree_checks_and_helpers():
    tree = DraftTree([5, 7, 9, 4], [-1, -1, 0, 2])
    assert tree.depths() == [1, 1, 2, 3]
    assert tree.children(-1) == {5: 0, 7: 1}
    assert tree.truncated(3).parents == [-1, -1, 0]
    assert DraftTree.chain([1, 2, 3]).parents == [-1, 0, 1]
    with pytest.raises(ValueError, match="earlier node"):
        DraftTree([1, 2], [1, -1])


def test_greedy_verdict_walks_the_longest_matching_path():
    tree = DraftTree([5, 7, 9, 4, 8], [-1, -1, 0, 2, 1])
    # rows: 0 root, 1 after node 0 (5), 2 after node 1 (7), 3 after node 2 (9), ...
    argmax = [5, 9, 0, 4, 6, 0]
    verdict = greedy_verdict(tree, argmax)
    assert verdict.accepted_nodes == [0, 2, 3] and verdict.tokens == [5, 9, 4, 6]
    # A miss at the root: nothing accepted, the target's token goes out.
    assert greedy_verdict(tree, [3, 0, 0, 0, 0, 0]).tokens == [3]
    # The other branch.
    assert greedy_verdict(tree, [7, 0, 8, 0, 0, 1]).accepted_nodes == [1, 4]


def test_sampled_verification_emits_the_target_distribution():
    """Whatever the tree, the first two emitted tokens follow the target's distribution
    (chi-square over all token pairs, fixed seed)."""
    rng = random.Random(0)
    target = {(): [0.5, 0.3, 0.2]}
    for t in range(3):
        target[(t,)] = [[0.1, 0.6, 0.3], [0.7, 0.2, 0.1], [0.3, 0.3, 0.4]][t]
    tree = DraftTree([1, 0, 1, 2], [-1, -1, 0, 1])  # a tree that disagrees with the target

    def sample(prefix):
        return rng.choices(range(3), weights=target[prefix])[0]
    counts = {pair: 0 for pair in itertools.product(range(3), repeat=2)}
    trials = 6000
    for _ in range(trials):
        emitted: list[int] = []

        def draw(row, emitted=emitted):
            token = sample(tuple(emitted[-1:]) if emitted else ())
            emitted.append(token)
            return token
        verdict = verify_tree(tree, draw)
        first = verdict.tokens[0]
        second = verdict.tokens[1] if len(verdict.tokens) > 1 else sample((first,))
        counts[(first, second)] += 1
    chi2 = sum((counts[(a, b)] - trials * target[()][a] * target[(a,)][b]) ** 2
               / (trials * target[()][a] * target[(a,)][b]) for a, b in counts)
    assert chi2 < 26.1  # chi-square, 8 degrees of freedom, p = 0.001


def test_options_parse_and_modes():
    options = TreeOptions.parse({"depth": 3, "top_k": 8, "total_tokens": 30,
                                 "chain_above_batch": 4, "off_above_batch": 32})
    assert [options.mode(b) for b in (1, 4, 5, 32, 33)] == ["tree", "tree", "chain",
                                                             "chain", "off"]
    with pytest.raises(ValueError, match="unknown"):
        TreeOptions.parse({"width": 3})
    with pytest.raises(ValueError, match="positive integer"):
        TreeOptions.parse({"depth": 0})
    with pytest.raises(ValueError, match="total_tokens is at most"):
        TreeOptions.parse({"total_tokens": 80})
    with pytest.raises(ValueError, match="must be an object"):
        TreeOptions.parse(3)
