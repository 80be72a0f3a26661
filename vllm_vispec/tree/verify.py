"""Lossless verification of a drafted tree against the target's outputs at every node.

The target ran the root (the last verified token) and every node of the tree in one
forward, so row 0 of its outputs follows the root and row ``i + 1`` follows node ``i``.
Walking down from the root, the target's own next token is drawn at the current row
(argmax when greedy, a sample from its distribution otherwise); if a child of the current
node carries that token, the child is accepted and the walk goes on from it, else the
drawn token ends the step. Every emitted token is thus exactly the target's own choice
given the accepted prefix: the output distribution is the target's, whatever the tree.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .dynamic_tree import DraftTree


@dataclass(frozen=True)
class TreeVerdict:
    accepted_nodes: list[int]  # node indices along the accepted path, root excluded
    tokens: list[int]  # the accepted nodes' tokens, then the target's next token

    @property
    def num_accepted(self) -> int:
        return len(self.accepted_nodes)


def verify_tree(tree: DraftTree, draw: Callable[[int], int]) -> TreeVerdict:
    """``draw(row)`` gives the target's token at output row ``row``."""
    children: dict[int, dict[int, int]] = {}
    for i, (token, parent) in enumerate(zip(tree.tokens, tree.parents)):
        children.setdefault(parent, {})[token] = i
    node, accepted, tokens = -1, [], []
    while True:
        token = draw(node + 1)
        tokens.append(token)
        child = children.get(node, {}).get(token)
        if child is None:
            return TreeVerdict(accepted, tokens)
        accepted.append(child)
        node = child


def greedy_verdict(tree: DraftTree, argmax_rows: list[int]) -> TreeVerdict:
    return verify_tree(tree, argmax_rows.__getitem__)
