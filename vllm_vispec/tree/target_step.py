"""One target step that verifies drafted trees (vLLM's classic model runner, CPU backend).

vLLM schedules a request's tree like a chain: the root (last verified token) and the nodes
in breadth-first order, with sequential slots. This step then

1. gives each node the position ``root + depth`` (the KV slot stays sequential);
2. replaces, in every target attention layer, the causal result of tree requests' rows by
   attention over the cached context plus the rows on the node's own path;
3. verifies the tree (:mod:`.verify`) instead of vLLM's chain rejection sampler, and
   returns vLLM's usual ``[num_reqs, max_spec_len + 1]`` tokens (accepted, then the
   target's next token, then -1);
4. moves the accepted nodes' target K/V to the slots after the root, where vLLM's
   scheduler (which keeps ``1 + accepted`` tokens) expects them, and lets the drafter
   see the accepted path as a chain (:meth:`TreeStep.chain_rows`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .. import kernel_dispatch
from ..kernels.tree_attention import ancestor_bits
from .dynamic_tree import DraftTree
from .verify import TreeVerdict, verify_tree

SAMPLING_EPS = 1e-5
# CPU attention ISAs whose in-block layout we read (checked at run time as well).
KNOWN_CPU_LAYOUTS = ("vec", "vec16")


def cpu_target_kv_views(kv_cache: torch.Tensor, isa: str):
    """Key and value caches of vLLM's CPU attention as ``[blocks, block_size, heads, D]``
    views. Per (block, head) the ``vec``/``vec16`` kernels store keys dimension-major
    (``[D, block_size]``) and values token-major (``[block_size, D]``)."""
    if isa not in KNOWN_CPU_LAYOUTS:
        raise NotImplementedError(
            f"vispec tree verification reads vLLM's CPU KV cache, whose layout for the "
            f"{isa!r} attention ISA it does not know (known: {KNOWN_CPU_LAYOUTS}); drop "
            '"tree" from the speculative config to draft chains')
    num_blocks, heads, block_size, two_d = kv_cache.shape
    head_dim = two_d // 2
    kv = kv_cache.view(num_blocks, heads, 2 * block_size, head_dim)
    keys = kv[:, :, :block_size].reshape(num_blocks, heads, head_dim, block_size)
    return keys.permute(0, 3, 1, 2), kv[:, :, block_size:].permute(0, 2, 1, 3)


@dataclass
class TreeRequest:
    index: int  # in the input batch
    root_row: int  # token index of the root in this step
    logits_row: int  # logits row of the root
    base: int  # position of the root
    tree: DraftTree
    verdict: TreeVerdict | None = None

    @property
    def branches(self) -> bool:
        return self.tree.parents != list(range(-1, len(self.tree) - 1))


@dataclass
class TreeStep:
    requests: list[TreeRequest]
    num_reqs: int
    num_tokens: int
    block_table: torch.Tensor  # the target's, rows in input-batch order
    slot_mapping: torch.Tensor  # [num_tokens] this step's (sequential) target slots
    _attention: dict | None = field(default=None, repr=False)
    _layout_checked: bool = False

    @classmethod
    def build(cls, spec_tokens: dict[str, list[int]], trees: dict[str, DraftTree],
              req_ids: list[str], query_start_loc: list[int], positions: torch.Tensor,
              block_table: torch.Tensor, slot_mapping: torch.Tensor) -> "TreeStep | None":
        """``None`` when no scheduled request carries a branching tree (a plain chain
        step, left to vLLM)."""
        requests, logits_row = [], 0
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
                root_row = query_start_loc[index + 1] - n - 1
                requests.append(TreeRequest(index, root_row, logits_row,
                                            int(positions[root_row]), tree))
            logits_row += n + 1
        if not any(r.branches for r in requests):
            return None
        return cls(requests, len(req_ids), query_start_loc[-1], block_table, slot_mapping)

    # ---- 1. positions ---------------------------------------------------------------------
    def set_positions(self, positions: torch.Tensor,
                      mrope_positions: torch.Tensor | None = None) -> None:
        for r in self.requests:
            shift = torch.tensor([i + 1 - d for i, d in enumerate(r.tree.depths())])
            rows = slice(r.root_row + 1, r.root_row + 1 + len(r.tree))
            positions[rows] -= shift.to(positions.device, positions.dtype)
            if mrope_positions is not None:
                mrope_positions[:, rows] -= shift.to(mrope_positions.device,
                                                     mrope_positions.dtype)[None]

    # ---- 2. attention ---------------------------------------------------------------------
    def _attention_inputs(self, device) -> dict:
        if self._attention is None:
            branching = [r for r in self.requests if r.branches]
            rows, token_req, bits = [], [], []
            for k, r in enumerate(branching):
                rows += range(r.root_row, r.root_row + len(r.tree) + 1)
                token_req += [k] * (len(r.tree) + 1)
                bits += ancestor_bits([-1] + [p + 1 for p in r.tree.parents])

            def i32(values):
                return torch.tensor(values, dtype=torch.int32, device=device)
            self._attention = dict(
                rows=torch.tensor(rows, dtype=torch.long, device=device),
                block_table=self.block_table[[r.index for r in branching]],
                token_req=i32(token_req), kept_starts=i32([0] * len(branching)),
                kept_ends=i32([r.base for r in branching]),
                cu_kept=i32(list(range(len(branching) + 1))),
                tree_start=i32([r.root_row for r in branching]),
                tree_len=i32([len(r.tree) + 1 for r in branching]),
                anc_bits=torch.tensor(bits, dtype=torch.int64, device=device),
                check_row=branching[0].root_row)
        return self._attention

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               kv_cache: torch.Tensor, isa: str, scale: float, output: torch.Tensor) -> None:
        """Overwrites ``output``'s rows of branching trees with tree attention."""
        a = self._attention_inputs(query.device)
        key_cache, value_cache = cpu_target_kv_views(kv_cache, isa)
        if not self._layout_checked:
            slot = int(self.slot_mapping[a["check_row"]])
            block_size = key_cache.shape[1]
            cached = key_cache[slot // block_size, slot % block_size]
            if not torch.equal(cached, key[a["check_row"]].to(cached.dtype)):
                raise RuntimeError(
                    f"vispec tree verification: vLLM's CPU KV cache layout for ISA {isa!r} "
                    "is not the one this version reads; drop \"tree\" from the "
                    "speculative config")
            self._layout_checked = True
        rows = a["rows"]
        heads, head_dim = query.shape[1], query.shape[2]
        block_table = a["block_table"]
        if kernel_dispatch.wants_kernel(query):
            # The kernel reads head_dim contiguously; this cache stores keys dimension-major.
            key_cache, value_cache, block_table = kernel_dispatch.token_major_blocks(
                key_cache, value_cache, block_table)
        out = kernel_dispatch.tree_paged_attention(
            query[rows], key_cache, value_cache, block_table, a["token_req"],
            a["kept_starts"], a["kept_ends"], a["cu_kept"], key[:self.num_tokens],
            value[:self.num_tokens], a["tree_start"], a["tree_len"], a["anc_bits"],
            scale=scale, site="target")
        output.view(-1, heads, head_dim)[rows] = out.to(output.dtype)

    # ---- 3. verification ------------------------------------------------------------------
    def verify(self, logits: torch.Tensor, sampling_metadata, max_spec_len: int
               ) -> torch.Tensor:
        """The step's sampled tokens, vLLM's rejection-sampler format."""
        from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p
        meta = sampling_metadata
        out = torch.full((self.num_reqs, max_spec_len + 1), -1, dtype=torch.int32)
        argmax = logits.argmax(dim=-1).tolist()
        by_index = {r.index: r for r in self.requests}
        row = 0
        for index in range(self.num_reqs):
            r = by_index.get(index)
            n = len(r.tree) if r is not None else 0
            rows = logits[row:row + n + 1]
            temperature = (float(meta.temperature[index]) if meta.temperature is not None
                           else 0.0)
            if temperature < SAMPLING_EPS:
                def draw(i, first=row):
                    return argmax[first + i]
            else:
                scaled = rows.float() / temperature
                k = meta.top_k[index:index + 1].expand(n + 1) if meta.top_k is not None \
                    else None
                p = meta.top_p[index:index + 1].expand(n + 1) if meta.top_p is not None \
                    else None
                probs = apply_top_k_top_p(scaled, k, p).softmax(-1)
                generator = meta.generators.get(index)

                def draw(i, probs=probs, generator=generator):
                    return int(torch.multinomial(probs[i], 1, generator=generator))
            tree = r.tree if r is not None else DraftTree([], [])
            verdict = verify_tree(tree, draw)
            if r is not None:
                r.verdict = verdict
            out[index, :len(verdict.tokens)] = torch.tensor(verdict.tokens,
                                                            dtype=torch.int32)
            row += n + 1
        return out.to(logits.device)

    # ---- 4. the accepted path as a chain --------------------------------------------------
    def chain_rows(self) -> tuple[list[int], list[int]]:
        """(destination, source) token rows that lay each accepted path right after its
        root, in an order that never overwrites a source still to be read."""
        dst, src = [], []
        for r in self.requests:
            for depth, node in enumerate(r.verdict.accepted_nodes if r.verdict else [],
                                         start=1):
                if node + 1 != depth:
                    dst.append(r.root_row + depth)
                    src.append(r.root_row + node + 1)
        return dst, src

    def move_kv(self, kv_caches: list[tuple[torch.Tensor, str]]) -> None:
        dst, src = self.chain_rows()
        if not dst:
            return
        slots_dst = self.slot_mapping[torch.tensor(dst)].long()
        slots_src = self.slot_mapping[torch.tensor(src)].long()
        for kv_cache, isa in kv_caches:
            for cache in cpu_target_kv_views(kv_cache, isa):
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
