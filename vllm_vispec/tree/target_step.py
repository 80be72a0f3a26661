"""One target step that verifies drafted trees (vLLM's classic model runner; CPU, FlashAttention,
FlashInfer and Triton attention backends).

vLLM schedules a request's tree like a chain: the root (last verified token) and the nodes
in breadth-first order, with sequential slots. This step then

1. gives each node the position ``root + depth`` (the KV slot stays sequential);
2. replaces, in every target attention layer, the causal result of tree requests' rows by
   attention over the cached context plus the rows on the node's own path;
3. verifies the trees (:mod:`.verify`'s rule, for the whole batch on the device:
   :mod:`.batched_verify`) instead of vLLM's chain rejection sampler, and returns vLLM's
   usual ``[num_reqs, max_spec_len + 1]`` tokens (accepted, then the target's next token,
   then -1);
4. moves the accepted nodes' target K/V to the slots after the root, where vLLM's
   scheduler (which keeps ``1 + accepted`` tokens) expects them, and lets the drafter
   see the accepted path as a chain (:meth:`TreeStep.chain_moves`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .. import kernel_dispatch
from ..kernels.tree_attention import ancestor_bits
from .dynamic_tree import DraftTree
from .batched_verify import (TreeBatch, TreeWalk, chain_moves, position_shifts,
                             target_draws, walk_trees)
from .target_kv import target_kv_views

# Backends whose cache split was checked against the key vLLM just wrote (once each).
_LAYOUTS_CHECKED: set[str] = set()


def upload(arrays: dict[str, np.ndarray], device) -> dict[str, torch.Tensor]:
    """Host integer arrays to ``device`` in one copy (int64 views of one buffer)."""
    flat = np.concatenate([np.asarray(a, dtype=np.int64).ravel() for a in arrays.values()])
    host = torch.from_numpy(flat)
    if torch.device(device).type == "cuda":
        host = host.pin_memory()
    on_device = host.to(device, non_blocking=True)
    out, at = {}, 0
    for name, a in arrays.items():
        n = int(np.asarray(a).size)
        out[name] = on_device[at:at + n]
        at += n
    return out


@dataclass
class TreeRequest:
    index: int  # in the input batch
    root_row: int  # token index of the root in this step
    logits_row: int  # logits row of the root
    tree: DraftTree

    @property
    def branches(self) -> bool:
        return self.tree.parents != list(range(-1, len(self.tree) - 1))


@dataclass
class TreeStep:
    requests: list[TreeRequest]
    num_reqs: int
    num_tokens: int
    positions: torch.Tensor  # the runner's positions buffer (roots keep theirs)
    block_table: torch.Tensor  # the target's, rows in input-batch order
    slot_mapping: torch.Tensor  # [num_tokens] this step's (sequential) target slots
    batch: TreeBatch  # every request's tree (None without drafts), padded on the device
    walk: TreeWalk | None = None  # the verification's outcome
    _attention: dict | None = field(default=None, repr=False)

    @classmethod
    def build(cls, spec_tokens: dict[str, list[int]], trees: dict[str, DraftTree],
              req_ids: list[str], query_start_loc: list[int], positions: torch.Tensor,
              block_table: torch.Tensor, slot_mapping: torch.Tensor) -> "TreeStep | None":
        """``None`` when no scheduled request carries a branching tree (a plain chain
        step, left to vLLM). Reads host state only."""
        requests, logits_row, root_rows = [], 0, []
        for index, req_id in enumerate(req_ids):
            # Only the count is read from the scheduler: under async scheduling its
            # draft tokens are placeholders (-1); the tree's tokens are the drafter's.
            n = len(spec_tokens.get(req_id, ()))
            if n:
                stored = trees.get(req_id)
                if stored is not None and len(stored) >= n:
                    tree = stored.truncated(n)  # the scheduler keeps a breadth-first prefix
                else:
                    tree = DraftTree(list(spec_tokens[req_id]), list(range(-1, n - 1)))
                requests.append(TreeRequest(index, query_start_loc[index + 1] - n - 1,
                                            logits_row, tree))
            root_rows.append(query_start_loc[index + 1] - n - 1)
            logits_row += n + 1
        if not any(r.branches for r in requests):
            return None
        by_index = {r.index: r.tree for r in requests}
        # The step's trees on the device, in one copy (positions, verification, moves).
        batch = TreeBatch.from_trees([by_index.get(i) for i in range(len(req_ids))],
                                     positions.device, root_rows)
        return cls(requests, len(req_ids), query_start_loc[-1], positions, block_table,
                   slot_mapping, batch)

    # ---- 1. positions ---------------------------------------------------------------------
    def set_positions(self, positions: torch.Tensor,
                      mrope_positions: torch.Tensor | None = None) -> None:
        """Node ``i`` of a tree at ``root + depth(i)`` instead of ``root + i + 1``."""
        shift = position_shifts(self.batch, self.num_tokens)
        positions[:self.num_tokens] -= shift.to(positions.dtype)
        if mrope_positions is not None:
            mrope_positions[:, :self.num_tokens] -= shift.to(mrope_positions.dtype)[None]

    # ---- 2. attention ---------------------------------------------------------------------
    def _attention_inputs(self, device) -> dict:
        if self._attention is None:
            branching = [r for r in self.requests if r.branches]
            rows, token_req, bits = [], [], []
            for k, r in enumerate(branching):
                rows += range(r.root_row, r.root_row + len(r.tree) + 1)
                token_req += [k] * (len(r.tree) + 1)
                bits += ancestor_bits([-1] + [p + 1 for p in r.tree.parents])
            a = upload({"rows": rows, "token_req": token_req, "anc_bits": bits,
                        "index": [r.index for r in branching],
                        "tree_start": [r.root_row for r in branching],
                        "tree_len": [len(r.tree) + 1 for r in branching],
                        "cu_kept": range(len(branching) + 1)}, device)
            i32 = {name: a[name].to(torch.int32)
                   for name in ("token_req", "tree_start", "tree_len", "cu_kept")}
            roots = a["tree_start"]
            self._attention = dict(
                rows=a["rows"], anc_bits=a["anc_bits"], roots=roots,
                block_table=self.block_table[a["index"]],
                kept_starts=torch.zeros_like(i32["cu_kept"][1:]),
                # The context: every position before the root (the root's own position).
                kept_ends=self.positions[roots].to(torch.int32), **i32,
                check_row=branching[0].root_row)
        return self._attention

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               kv_cache: torch.Tensor, backend: str, isa: str | None, scale: float,
               output: torch.Tensor) -> None:
        """Overwrites ``output``'s rows of branching trees with tree attention: each row
        attends to its request's cached context (read through ``backend``'s split of
        ``kv_cache``) and to the fresh K/V of the rows on its own path."""
        a = self._attention_inputs(query.device)
        key_cache, value_cache = target_kv_views(kv_cache, backend, isa)
        layout = f"{backend}:{isa}"
        if layout not in _LAYOUTS_CHECKED:
            self._check_layout(key_cache, key, a["check_row"], layout)
        rows = a["rows"]
        heads, head_dim = query.shape[1], query.shape[2]
        block_table = a["block_table"]
        if kernel_dispatch.wants_kernel(query) and backend == "CPU_ATTN":
            # The kernel reads head_dim contiguously; this cache stores keys dimension-major.
            key_cache, value_cache, block_table = kernel_dispatch.token_major_blocks(
                key_cache, value_cache, block_table)
        out = kernel_dispatch.tree_paged_attention(
            query[rows], key_cache, value_cache, block_table, a["token_req"],
            a["kept_starts"], a["kept_ends"], a["cu_kept"], key[:self.num_tokens],
            value[:self.num_tokens], a["tree_start"], a["tree_len"], a["anc_bits"],
            scale=scale, site="target")
        output.view(-1, heads, head_dim)[rows] = out.to(output.dtype)

    def _check_layout(self, key_cache, key, row: int, layout: str) -> None:
        """Once per backend and process: the key vLLM just wrote for a root is where this
        split reads it (one host read)."""
        slot = int(self.slot_mapping[row])
        block_size = key_cache.shape[1]
        cached = key_cache[slot // block_size, slot % block_size]
        if not torch.equal(cached, key[row].to(cached.dtype)):
            raise RuntimeError(
                f"vispec tree verification: the target's KV cache under {layout} is not "
                "laid out as this version reads it; drop \"tree\" from the speculative "
                "config")
        _LAYOUTS_CHECKED.add(layout)

    # ---- 3. verification ------------------------------------------------------------------
    def verify(self, logits: torch.Tensor, sampling_metadata, max_spec_len: int
               ) -> torch.Tensor:
        """The step's sampled tokens, vLLM's rejection-sampler format, from a walk of all
        trees at once on the device (batched_verify)."""
        from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p
        meta = sampling_metadata
        draws = target_draws(logits, self.batch, meta.temperature, meta.top_k, meta.top_p,
                             meta.generators, filter_logits=apply_top_k_top_p)
        self.walk = walk_trees(self.batch, draws, max_spec_len + 1)
        return self.walk.sampled

    # ---- 4. the accepted path as a chain --------------------------------------------------
    def chain_moves(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(destination, source) token rows that lay each accepted path right after its
        root, as ``x[dst] = x[src].clone()`` applies them (entries that move nothing copy
        a root onto itself)."""
        return chain_moves(self.walk.accepted, self.batch.root_rows)

    def move_kv(self, kv_views: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Copies each accepted node's target K/V to its place on the chain, in every
        target layer (``kv_views``: (key cache, value cache) views per layer)."""
        dst, src = self.chain_moves()
        slots_dst = self.slot_mapping[dst].long()
        slots_src = self.slot_mapping[src].long()
        for views in kv_views:
            for cache in views:
                bs = cache.shape[1]
                moved = cache[slots_src // bs, slots_src % bs].clone()
                cache[slots_dst // bs, slots_dst % bs] = moved


def plain_sampling(sampling_metadata, requests) -> bool:
    """Whether every request samples with temperature/top-k/top-p only: what tree
    verification implements (no penalties, logprobs, bad words, allowed-token masks,
    minimum lengths or structured output)."""
    meta = sampling_metadata
    if not meta.no_penalties or meta.max_num_logprobs is not None:
        return False
    if meta.bad_words_token_ids or meta.allowed_token_ids_mask is not None:
        return False
    for request in requests:
        params = getattr(request, "sampling_params", None)
        if params is None:
            continue
        if params.min_tokens or getattr(params, "structured_outputs", None) is not None:
            return False
        if getattr(params, "min_p", 0.0):
            return False
    return True
