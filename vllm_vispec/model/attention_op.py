"""The draft layer's attention step as one registered op, ``vllm::vispec_draft_attention``.

As vLLM does for its own attention (``vllm::unified_attention_with_output``), the step
that reads per-step metadata is an opaque op: it looks its layer and this forward's
metadata up in vLLM's forward context by layer name, so torch.compile traces the draft
around it (the projections, rotary, MLP and norm compile and fuse; the op stays a call),
and the model's inputs are tensors only.

Inside: store the new K/V at their paged slots (the cache vLLM bound to the layer, in
its backend's layout) and attend over each request's kept slots, or, while a tree grows,
over the request's kept slots plus the tree rows on the node's path.
"""

from __future__ import annotations

import torch
from vllm.forward_context import get_forward_context, is_forward_context_available
from vllm.utils.torch_utils import direct_register_custom_op

from .. import kernel_dispatch
from .compressed_attention import (CompressedAttentionMetadata, compressed_paged_attention,
                                   paged_kv_views, write_kv)

OP_NAME = "vispec_draft_attention"
QUALIFIED_NAME = f"vllm::{OP_NAME}"


def step_metadata(layer_name: str) -> CompressedAttentionMetadata | None:
    """This forward's metadata for the layer (None in vLLM's warm-up and profiling
    runs, which carry no batch)."""
    if not is_forward_context_available():
        return None
    per_layer = get_forward_context().attn_metadata
    if not isinstance(per_layer, dict):
        return None
    return per_layer.get(layer_name)


def draft_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    output: torch.Tensor, layer_name: str) -> None:
    """``query`` [T, heads, D], ``key``/``value`` [T, kv_heads, D] -> ``output`` [T, heads,
    D]; rows past the metadata's tokens (padding) get zeros."""
    meta = step_metadata(layer_name)
    if meta is None:
        output.zero_()
        return
    layer = get_forward_context().no_compile_layers[layer_name]
    n = meta.query_positions.shape[0]
    q, k, v = query[:n], key[:n], value[:n]
    key_cache, value_cache = paged_kv_views(layer.kv_cache, layer.kv_split)
    if meta.tree is None:
        write_kv(key_cache, value_cache, k, v, meta.slot_mapping)
        out = compressed_paged_attention(q, key_cache, value_cache, meta, layer.scale)
    else:
        tree = meta.tree
        tree.key[tree.write_rows] = k.to(tree.key.dtype)
        tree.value[tree.write_rows] = v.to(tree.value.dtype)
        out = kernel_dispatch.tree_paged_attention(
            q, key_cache, value_cache, meta.block_table, meta.token_req, meta.kept_starts,
            meta.kept_ends, meta.cu_kept, tree.key, tree.value, tree.start, tree.length,
            tree.anc_bits, scale=layer.scale, site="draft")
    output[:n] = out.to(output.dtype)
    if n < output.shape[0]:
        output[n:] = 0


def _draft_attention_fake(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          output: torch.Tensor, layer_name: str) -> None:
    return None


direct_register_custom_op(OP_NAME, draft_attention, mutates_args=["output"],
                          fake_impl=_draft_attention_fake)
