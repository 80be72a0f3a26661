"""Growing an EAGLE-2 dynamic tree, one request at a time or a batch at once.

Level 1 holds the ``top_k`` best first tokens. Each further level expands the ``top_k``
candidates of the previous level with the best cumulative log-probability (the
*frontier*), ``top_k`` children each. At the end the ``num_nodes`` best candidates of
all levels are kept: a child never scores above its parent, so the kept set holds every
kept node's ancestors. Kept nodes are returned in breadth-first order (parents first).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class DraftTree:
    """One request's drafted tree: ``tokens[i]`` hangs under node ``parents[i]`` (-1: the
    root, i.e. the last verified token); parents come before children."""

    tokens: list[int]
    parents: list[int]

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.parents):
            raise ValueError("tokens and parents differ in length")
        for i, p in enumerate(self.parents):
            if not -1 <= p < i:
                raise ValueError(f"node {i}: parent {p} must be -1 or an earlier node")

    def __len__(self) -> int:
        return len(self.tokens)

    def depths(self) -> list[int]:
        out: list[int] = []
        for p in self.parents:
            out.append(1 + (out[p] if p >= 0 else 0))
        return out

    def truncated(self, n: int) -> "DraftTree":
        """The first ``n`` nodes (a tree again: parents come first)."""
        return DraftTree(self.tokens[:n], self.parents[:n])

    def children(self, node: int) -> dict[int, int]:
        """Token -> child node of ``node`` (-1: the root)."""
        return {t: i for i, (t, p) in enumerate(zip(self.tokens, self.parents)) if p == node}

    @classmethod
    def chain(cls, tokens: list[int]) -> "DraftTree":
        return cls(list(tokens), list(range(-1, len(tokens) - 1)))


@dataclass
class TreeGrowth:
    """Candidates of a batch of trees while they grow (``[batch, candidates]`` each)."""

    top_k: int
    tokens: torch.Tensor
    scores: torch.Tensor
    parents: torch.Tensor  # candidate index of the parent, -1 for level 1
    depths: torch.Tensor
    frontier: torch.Tensor = field(init=False)  # [batch, top_k] candidates to expand next

    def __post_init__(self) -> None:
        self.frontier = self._best_of_last_level(self.tokens.shape[1])

    @classmethod
    def start(cls, logprobs: torch.Tensor, top_k: int) -> "TreeGrowth":
        """Level 1 from the draft's log-probabilities after the root (``[batch, vocab]``)."""
        scores, tokens = logprobs.float().topk(top_k, dim=-1)
        return cls(top_k, tokens, scores, torch.full_like(tokens, -1),
                   torch.ones_like(tokens))

    def _best_of_last_level(self, level_size: int) -> torch.Tensor:
        last = self.scores[:, -level_size:]
        best = last.topk(min(self.top_k, level_size), dim=-1).indices
        return best + (self.scores.shape[1] - level_size)

    def frontier_tokens(self) -> torch.Tensor:
        return self.tokens.gather(1, self.frontier)

    def extend(self, logprobs: torch.Tensor) -> None:
        """Adds the children of the frontier from the draft's log-probabilities after each
        frontier node (``[batch, top_k, vocab]``), and picks the next frontier."""
        k = self.top_k
        child_lp, child_tok = logprobs.float().topk(k, dim=-1)  # [B, F, k]
        parent_scores = self.scores.gather(1, self.frontier)
        scores = (parent_scores[:, :, None] + child_lp).flatten(1)
        parents = self.frontier[:, :, None].expand_as(child_tok).flatten(1)
        depth = self.depths.gather(1, self.frontier)[:, :, None].expand_as(child_tok) + 1
        self.tokens = torch.cat([self.tokens, child_tok.flatten(1)], dim=1)
        self.scores = torch.cat([self.scores, scores], dim=1)
        self.parents = torch.cat([self.parents, parents], dim=1)
        self.depths = torch.cat([self.depths, depth.flatten(1)], dim=1)
        self.frontier = self._best_of_last_level(scores.shape[1])

    def select(self, num_nodes: int) -> list[DraftTree]:
        """The ``num_nodes`` best candidates of each tree, breadth first."""
        # One read back for the whole batch (float64 holds fp32 scores and token ids
        # exactly): the trees go to the host once per step, for the scheduler's count and
        # the verification step's bookkeeping.
        packed = torch.stack([self.scores.double(), self.depths.double(),
                              self.parents.double(), self.tokens.double()]).cpu()
        all_scores, all_depths, all_parents, all_tokens = (
            packed[0].tolist(), packed[1].long().tolist(), packed[2].long().tolist(),
            packed[3].long().tolist())
        out = []
        for b in range(self.tokens.shape[0]):
            scores, depths = all_scores[b], all_depths[b]
            parents, tokens = all_parents[b], all_tokens[b]
            # Best score first; on a tie the shallower node first, so ancestors precede.
            ranked = sorted(range(len(scores)), key=lambda c: (-scores[c], depths[c], c))
            kept = sorted(ranked[:num_nodes], key=lambda c: (depths[c], c))
            index = {c: i for i, c in enumerate(kept)}
            out.append(DraftTree([tokens[c] for c in kept],
                                 [index[parents[c]] if parents[c] >= 0 else -1
                                  for c in kept]))
        return out
