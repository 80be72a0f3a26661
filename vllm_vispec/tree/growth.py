"""EAGLE-2 tree growth with the ViSpec draft: ``depth`` draft passes, each over every
request's ``top_k`` best nodes of the level; each node attends to its request's kept
context and its own path (the tree's K/V rows, not the paged cache)."""

from __future__ import annotations

import torch
from vllm.forward_context import set_forward_context

from ..draft_metadata import StepImages
from ..model.compressed_attention import CompressedAttentionMetadata, TreeRows
from .dynamic_tree import DraftTree, TreeGrowth
from .options import TreeOptions


@torch.inference_mode()
def grow_trees(proposer, options: TreeOptions, first: torch.Tensor, images: StepImages,
               last_pos: torch.Tensor, block_table: torch.Tensor) -> list[DraftTree]:
    """``first`` [batch, H]: the draft's feature at each request's last token (position
    ``last_pos``), from the pass vLLM ran."""
    draft = proposer.model.model
    k, dims = options.top_k, draft.dims
    batch = first.shape[0]
    growth = TreeGrowth.start(proposer.model.compute_logits(first).log_softmax(-1), k)
    device = first.device
    kept_ends = images.kept_ends_below(last_pos + 1)
    rows_per_req = k * options.expansions
    kv_heads = draft.layers[0].self_attn.num_kv_heads  # this tensor-parallel rank's
    tree_key = torch.zeros(batch * rows_per_req, kv_heads, dims.head_dim,
                           dtype=first.dtype, device=device)
    tree_value = torch.zeros_like(tree_key)
    # Every tensor on the draft's device: the growth runs no host round trip per level.
    row_of = torch.full((batch, growth.tokens.shape[1] + options.expansions * k * k), -1,
                        dtype=torch.long, device=device)
    row_bits = torch.zeros(batch, rows_per_req, dtype=torch.int64, device=device)
    row_features = first.new_zeros(batch, rows_per_req, first.shape[-1])
    arange_b = torch.arange(batch, device=device)
    token_req = torch.arange(batch, device=device).repeat_interleave(k)
    starts = torch.arange(batch, device=device, dtype=torch.int32) * rows_per_req
    n = batch * k
    for level in range(1, options.expansions + 1):
        frontier = growth.frontier  # [batch, k] candidates of this level
        parents = growth.parents.gather(1, frontier)
        rows = torch.arange((level - 1) * k, level * k, device=device).expand(batch, k)
        parent_rows = row_of.gather(1, parents.clamp(min=0))
        if level == 1:
            features = first[:, None].expand(batch, k, first.shape[-1])
            bits = torch.zeros(batch, k, dtype=torch.int64, device=device)
        else:
            features = row_features[arange_b[:, None], parent_rows]
            bits = row_bits.gather(1, parent_rows)
        bits = bits | (1 << rows)
        row_bits.scatter_(1, rows, bits)
        row_of.scatter_(1, frontier, rows)
        # contiguous: vLLM's CPU rotary kernel reads positions densely
        positions = (last_pos[:, None] + level).expand(batch, k).flatten().contiguous()
        meta = CompressedAttentionMetadata(
            query_positions=positions, token_req=token_req.to(torch.int32),
            slot_mapping=torch.full((n,), -1, dtype=torch.long, device=device),
            block_table=block_table, kept_starts=images.kept_starts, kept_ends=kept_ends,
            cu_kept=images.cu_kept,
            tree=TreeRows(key=tree_key, value=tree_value,
                          write_rows=(arange_b[:, None] * rows_per_req + rows).flatten(),
                          start=starts,
                          length=torch.full((batch,), level * k, dtype=torch.int32,
                                            device=device),
                          anc_bits=bits.flatten()))
        draft.image_inputs.global_rows[:n] = images.global_rows(token_req, positions)
        draft.image_inputs.replace_rows[:n] = 0
        with set_forward_context({name: meta for name in proposer.draft_layer_names},
                                 proposer.vllm_config, num_tokens=n):
            out, _ = proposer.model(
                input_ids=growth.frontier_tokens().flatten(),
                positions=positions,
                hidden_states=features.reshape(n, -1).contiguous())
        row_features[arange_b[:, None], rows] = out.view(batch, k, -1)
        logprobs = proposer.model.compute_logits(out).log_softmax(-1)
        growth.extend(logprobs.view(batch, k, -1))
    return growth.select(options.num_nodes)
