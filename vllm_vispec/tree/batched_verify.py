"""Tree verification for a whole batch on the device, without host round trips.

The same rule as :func:`.verify.verify_tree`, as tensors over all requests of a step:

- :class:`TreeBatch` holds the step's drafted trees padded to ``[R, N]``, uploaded in one
  host-to-device copy;
- :func:`target_draws` draws the target's token at every logits row at once (argmax when
  greedy, else one independent sample per row from softmax(logits / T) after top-k/top-p);
- :func:`walk_trees` walks all trees down together for a fixed number of steps and returns
  vLLM's sampled-token layout;
- :func:`chain_moves` gives the row moves that lay each accepted path right after its root;
- :func:`node_depths` / :func:`position_shifts` give node positions (root + depth).

Only :meth:`TreeBatch.from_trees` touches host data (the drafted trees live on the host);
the other functions read no device value on the host, so a step's verification is a fixed
sequence of kernels whose shapes depend on host ints alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

from .dynamic_tree import DraftTree

SAMPLING_EPS = 1e-5  # vLLM's: a temperature below it means greedy
PAD_TOKEN = -1  # in TreeBatch.tokens past a tree's size (matching is masked by size anyway)
PAD_PARENT = -2  # in TreeBatch.parents past a tree's size: no node's index, not the root's
PAD_DRAW = -1  # in target_draws' output past a request's rows

LogitsFilter = Callable[[torch.Tensor, "torch.Tensor | None", "torch.Tensor | None"],
                        torch.Tensor]


@dataclass(frozen=True)
class TreeBatch:
    """A step's drafted trees, padded on the device.

    Request ``r`` owns logits rows ``first_row[r] .. first_row[r] + sizes[r]`` (inclusive):
    its first row follows the root, row ``first_row[r] + i + 1`` follows node ``i``. A
    request with no drafted tokens has size 0 and one row.
    """

    tokens: torch.Tensor  # [R, N] int64, PAD_TOKEN past sizes[r]
    parents: torch.Tensor  # [R, N] int64, -1: child of the root, PAD_PARENT past sizes[r]
    sizes: torch.Tensor  # [R] int64
    first_row: torch.Tensor  # [R] int64, the request's first logits row
    row_request: torch.Tensor  # [num_rows] int64, the request owning each logits row
    root_rows: torch.Tensor | None  # [R] int64 token row of each root, when given
    max_nodes: int  # N (host int): the largest tree's size
    max_depth: int  # host int: the deepest node's depth over the batch (0: no tree)
    num_rows: int  # host int: logits rows of the step, sum(sizes + 1)
    host_sizes: tuple[int, ...]  # sizes on the host (per-request generator slices)
    host_first_rows: tuple[int, ...]

    @property
    def num_requests(self) -> int:
        return len(self.host_sizes)

    def valid(self) -> torch.Tensor:
        """``[R, N]`` bool: which padded entries are real nodes."""
        cols = torch.arange(self.max_nodes, device=self.sizes.device)
        return cols[None, :] < self.sizes[:, None]

    @classmethod
    def from_trees(cls, trees: list[DraftTree | None], device: torch.device | str,
                   root_rows: list[int] | None = None) -> "TreeBatch":
        """``trees[r]``: request ``r``'s tree (``None`` or empty: no drafted tokens), in the
        step's request order, whose logits rows follow each other. ``root_rows``: each
        request's root token row in the step (carried in the same copy, for
        :func:`chain_moves` and :func:`position_shifts`)."""
        device = torch.device(device)
        sizes = [len(t) if t is not None else 0 for t in trees]
        num_reqs, n = len(trees), max(sizes, default=0)
        if root_rows is not None and len(root_rows) != num_reqs:
            raise ValueError(f"{len(root_rows)} root rows for {num_reqs} requests")
        tokens = [PAD_TOKEN] * (num_reqs * n)
        parents = [PAD_PARENT] * (num_reqs * n)
        first_rows, row_request, max_depth, row = [], [], 0, 0
        for r, (tree, size) in enumerate(zip(trees, sizes)):
            if size:
                tokens[r * n:r * n + size] = tree.tokens
                parents[r * n:r * n + size] = tree.parents
                max_depth = max(max_depth, max(tree.depths()))
            first_rows.append(row)
            row_request += [r] * (size + 1)
            row += size + 1
        # One host-to-device copy: everything packed in one (pinned) host tensor.
        packed = torch.tensor(tokens + parents + sizes + first_rows + (root_rows or [])
                              + row_request, dtype=torch.int64)
        if device.type == "cuda" and torch.cuda.is_available():
            packed = packed.pin_memory()
        packed = packed.to(device, non_blocking=True)
        roots_len = num_reqs if root_rows is not None else 0
        tokens_d, parents_d, sizes_d, first_d, roots_d, row_request_d = packed.split(
            [num_reqs * n, num_reqs * n, num_reqs, num_reqs, roots_len, row])
        return cls(tokens=tokens_d.view(num_reqs, n), parents=parents_d.view(num_reqs, n),
                   sizes=sizes_d, first_row=first_d, row_request=row_request_d,
                   root_rows=roots_d if root_rows is not None else None,
                   max_nodes=n, max_depth=max_depth, num_rows=row,
                   host_sizes=tuple(sizes), host_first_rows=tuple(first_rows))


# ---- the target's token at every row ------------------------------------------------------
def top_k_top_p_filter(logits: torch.Tensor, k: torch.Tensor | None,
                       p: torch.Tensor | None) -> torch.Tensor:
    """Sets to -inf what top-k / top-p remove, per row (``k``, ``p``: ``[rows]`` or None),
    with vLLM's rules: top-k keeps every logit at least the k-th largest (ties kept), then
    top-p removes, in ascending order, the logits whose cumulative probability stays
    within ``1 - p``, keeping the largest always. Sort-based, without host reads. May
    update ``logits`` in place."""
    if k is None and p is None:
        return logits
    ascending, order = logits.sort(dim=-1)
    if k is not None:
        kth = ascending.gather(1, (logits.shape[1] - k.long()).unsqueeze(1))
        ascending.masked_fill_(ascending < kth, float("-inf"))
    if p is not None:
        cumulative = ascending.softmax(dim=-1).cumsum(dim=-1)
        dropped = cumulative <= 1 - p.unsqueeze(1)
        dropped[:, -1] = False
        ascending.masked_fill_(dropped, float("-inf"))
    return logits.scatter_(dim=-1, index=order, src=ascending)


def _exponential_noise(probs: torch.Tensor, batch: TreeBatch,
                       generators: dict[int, torch.Generator]) -> torch.Tensor:
    """Exp(1) noise per logits row; a request with its own generator draws all its rows
    from it (in row order), as vLLM's sampler does for its one row."""
    q = torch.empty_like(probs)
    if len(generators) < batch.num_requests:
        q.exponential_()
    for r, generator in generators.items():
        start = batch.host_first_rows[r]
        q[start:start + batch.host_sizes[r] + 1].exponential_(generator=generator)
    return q


def sample_rows(logits: torch.Tensor, batch: TreeBatch, temperature: torch.Tensor | None,
                top_k: torch.Tensor | None = None, top_p: torch.Tensor | None = None,
                generators: dict[int, torch.Generator] | None = None,
                filter_logits: LogitsFilter = top_k_top_p_filter) -> torch.Tensor:
    """``[num_rows]`` int64: the target's token at each logits row. ``temperature``,
    ``top_k``, ``top_p``: ``[R]`` per request (vLLM's SamplingMetadata; ``None``: all
    greedy / unused)."""
    if logits.shape[0] != batch.num_rows:
        raise ValueError(f"{logits.shape[0]} logits rows for a batch of {batch.num_rows}")
    greedy = logits.argmax(dim=-1)
    if temperature is None:
        return greedy
    row_request = batch.row_request
    row_temperature = temperature[row_request].float()
    is_greedy = row_temperature < SAMPLING_EPS
    scaled = logits.float() / torch.where(is_greedy, 1.0, row_temperature).unsqueeze(1)
    scaled = filter_logits(scaled, top_k[row_request] if top_k is not None else None,
                           top_p[row_request] if top_p is not None else None)
    probs = scaled.softmax(dim=-1, dtype=torch.float32)
    # Exponential race: argmax(probs / q) with q ~ Exp(1) is a sample from probs.
    sampled = probs.div_(_exponential_noise(probs, batch, generators or {})).argmax(dim=-1)
    return torch.where(is_greedy, greedy, sampled)


def target_draws(logits: torch.Tensor, batch: TreeBatch, temperature: torch.Tensor | None,
                 top_k: torch.Tensor | None = None, top_p: torch.Tensor | None = None,
                 generators: dict[int, torch.Generator] | None = None,
                 filter_logits: LogitsFilter = top_k_top_p_filter) -> torch.Tensor:
    """``[R, N + 1]`` int64: ``[r, j]`` is the target's token at request ``r``'s row ``j``
    (j = 0 after the root, j = i + 1 after node i), PAD_DRAW past its rows."""
    flat = sample_rows(logits, batch, temperature, top_k, top_p, generators, filter_logits)
    cols = torch.arange(batch.max_nodes + 1, device=flat.device)
    owned = cols[None, :] <= batch.sizes[:, None]
    rows = torch.where(owned, batch.first_row[:, None] + cols[None, :], 0)
    return torch.where(owned, flat[rows], PAD_DRAW)


# ---- the walk -----------------------------------------------------------------------------
class TreeWalk(NamedTuple):
    accepted: torch.Tensor  # [R, max_depth] int64 node indices along the path, -1 padded
    num_accepted: torch.Tensor  # [R] int64
    sampled: torch.Tensor  # [R, width] int32: accepted tokens, the next token, then -1


def walk_trees(batch: TreeBatch, draws: torch.Tensor, width: int) -> TreeWalk:
    """Walks every tree down from its root: at the current node's row the target's draw
    either is a child's token (accept it, go on from the child) or ends the walk (the
    emitted next token). ``width``: vLLM's ``max_spec_len + 1``. ``max_depth + 1``
    vectorized steps; among siblings with the same token the last one is taken, as in
    :func:`.verify.verify_tree`."""
    if width < batch.max_depth + 1:
        raise ValueError(f"width {width} cannot hold a path of depth {batch.max_depth} "
                         "and the next token")
    num_reqs, device = batch.num_requests, draws.device
    valid = batch.valid()
    node_index = torch.arange(batch.max_nodes, device=device)
    current = torch.full((num_reqs,), -1, dtype=torch.int64, device=device)
    alive = torch.ones(num_reqs, dtype=torch.bool, device=device)
    accepted = torch.full((num_reqs, batch.max_depth), -1, dtype=torch.int64, device=device)
    sampled = torch.full((num_reqs, width), -1, dtype=torch.int32, device=device)
    for depth in range(batch.max_depth + 1):
        draw = draws.gather(1, (current + 1).unsqueeze(1)).squeeze(1)
        sampled[:, depth] = torch.where(alive, draw, -1).to(torch.int32)
        if depth == batch.max_depth:
            break  # no node is deeper: the draw just written ends every walk
        match = (valid & (batch.parents == current[:, None])
                 & (batch.tokens == draw[:, None]) & alive[:, None])
        child = torch.where(match, node_index, -1).amax(dim=1)
        alive = child >= 0
        accepted[:, depth] = child
        current = torch.where(alive, child, current)
    num_accepted = (accepted >= 0).sum(dim=1)
    return TreeWalk(accepted, num_accepted, sampled)


# ---- laying accepted paths out as chains --------------------------------------------------
def chain_moves(accepted: torch.Tensor, root_rows: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dst, src)``, ``[R * max_depth]`` int64 each: token rows that put each accepted
    path right after its root (node i sits at row root + i + 1, depth d belongs at row
    root + d), for ``x[dst] = x[src]``. Entries with nothing to move (depths past the
    accepted count, requests with no tree) copy the root row onto itself: each row is
    written by at most one real move, and identity entries only rewrite a root row with
    its own value (root rows are never a move's destination), so duplicates are harmless.
    ``root_rows`` must be each request's own root token row."""
    depth = torch.arange(1, accepted.shape[1] + 1, device=accepted.device)
    root = root_rows.to(accepted.device, torch.int64)[:, None]
    moved = accepted >= 0
    dst = torch.where(moved, root + depth[None, :], root)
    src = torch.where(moved, root + accepted + 1, root)
    return dst.flatten(), src.flatten()


# ---- node positions -----------------------------------------------------------------------
def node_depths(batch: TreeBatch) -> torch.Tensor:
    """``[R, N]`` int64: each node's depth (1 under the root), 0 for padding. Follows
    every node's ancestors up ``max_depth - 1`` times."""
    parents = batch.parents
    depth = batch.valid().to(torch.int64)
    ancestor = parents
    for _ in range(batch.max_depth - 1):
        has = ancestor >= 0
        depth = depth + has
        ancestor = torch.where(has, parents.gather(1, ancestor.clamp(min=0)), -1)
    return depth


def position_shifts(batch: TreeBatch, num_tokens: int,
                    root_rows: torch.Tensor | None = None) -> torch.Tensor:
    """``[num_tokens]`` int64 to subtract from the step's sequential positions so that node
    i (row root + i + 1, position root + i + 1) sits at root + depth; 0 on other rows.
    ``root_rows``: default the batch's."""
    root_rows = batch.root_rows if root_rows is None else root_rows
    if root_rows is None:
        raise ValueError("position_shifts needs the requests' root rows")
    device = batch.parents.device
    valid = batch.valid()
    index = torch.arange(batch.max_nodes, device=device)
    root = root_rows.to(device, torch.int64)[:, None]
    rows = torch.where(valid, root + 1 + index[None, :], root)  # padding adds 0 to a root
    shift = torch.where(valid, index[None, :] + 1 - node_depths(batch), 0)
    out = torch.zeros(num_tokens, dtype=torch.int64, device=device)
    return out.scatter_add_(0, rows.flatten(), shift.flatten())
