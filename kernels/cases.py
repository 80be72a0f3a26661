"""Inputs shaped the way vLLM hands them to the paged kernels, for the kernel tests and
the self-check: block tables over shuffled blocks, and the flat per-request metadata of
tree attention. Torch only (no vLLM, no Triton)."""

from __future__ import annotations

import torch

from .tree_attention import ancestor_bits


def shuffled_block_table(seq_lens: list[int], block_size: int, generator: torch.Generator,
                         spare_blocks: int) -> tuple[torch.Tensor, int]:
    """A block table whose blocks are handed to the requests in a random order, plus
    ``spare_blocks`` no request owns: (block_table [reqs, max_blocks] int32, num_blocks)."""
    blocks_per_req = [-(-s // block_size) for s in seq_lens]
    num_blocks = sum(blocks_per_req) + spare_blocks
    perm = torch.randperm(num_blocks, generator=generator)
    block_table = torch.zeros(len(seq_lens), max(blocks_per_req), dtype=torch.int32)
    used = 0
    for r, n in enumerate(blocks_per_req):
        block_table[r, :n] = perm[used:used + n]
        used += n
    return block_table, num_blocks


def tree_metadata(context_intervals: list[list[tuple[int, int]]],
                  trees: list[list[int]]) -> dict[str, list[int]]:
    """Tree attention's per-row and per-request lists for requests with kept context
    intervals and a tree each (parent lists), every tree row also a query (verification)."""
    out = {k: [] for k in ("token_req", "anc_bits", "kept_starts", "kept_ends",
                           "tree_start", "tree_len")}
    out["cu_kept"] = [0]
    for r, (intervals, parents) in enumerate(zip(context_intervals, trees)):
        out["kept_starts"] += [s for s, _ in intervals]
        out["kept_ends"] += [e for _, e in intervals]
        out["cu_kept"].append(len(out["kept_starts"]))
        out["tree_start"].append(len(out["token_req"]))
        out["tree_len"].append(len(parents))
        out["token_req"] += [r] * len(parents)
        out["anc_bits"] += ancestor_bits(parents)
    return out


def context_ends(context_intervals: list[list[tuple[int, int]]]) -> list[int]:
    """Each request's cached length: the end of its last kept interval (at least 1)."""
    return [max([e for _, e in intervals] + [1]) for intervals in context_intervals]
