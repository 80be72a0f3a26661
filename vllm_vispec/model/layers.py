"""The ViSpec draft's building blocks on vLLM layers: its decoder layer and image adaptor."""

from __future__ import annotations

import torch
from torch import nn
from vllm.config import VllmConfig
from vllm.distributed import get_tensor_model_parallel_world_size
from vllm.model_executor.layers.activation import SiluAndMul
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.layers.linear import (MergedColumnParallelLinear, QKVParallelLinear,
                                               ReplicatedLinear, RowParallelLinear)
from vllm.model_executor.layers.rotary_embedding import get_rope

from .. import kernel_dispatch
from ..kernels.image_compression import fold_queries, project_pooled
from . import attention_op  # noqa: F401  (registers torch.ops.vllm.vispec_draft_attention)
from .draft_kv_cache import DraftKVCacheAttention
from .layout import DraftDims


class DraftAttention(nn.Module):
    """Multi-head self-attention with RoPE over the draft layer's paged KV cache, in
    ViSpec's compressed layout (see compressed_attention.py).

    ``self.attn`` is a vLLM attention layer so that vLLM allocates and manages this
    layer's paged cache (blocks, prefix caching, preemption); the draft reads and writes
    that cache itself, in the model dtype and the backend's layout (draft_kv_cache.py).

    Tensor parallel like the target's layers: each rank holds ``num_heads / tp`` query
    heads and its share of the KV heads (replicated when there are fewer than ranks), and
    ``o_proj`` sums the ranks' outputs.
    """

    def __init__(self, dims: DraftDims, vllm_config: VllmConfig, prefix: str) -> None:
        super().__init__()
        tp = get_tensor_model_parallel_world_size()
        if dims.num_heads % tp or (dims.num_kv_heads % tp and tp % dims.num_kv_heads):
            raise ValueError(
                f"the vispec draft has {dims.num_heads} attention heads and "
                f"{dims.num_kv_heads} KV heads, which tensor_parallel_size={tp} cannot split")
        self.num_heads = dims.num_heads // tp
        self.num_kv_heads = max(1, dims.num_kv_heads // tp)
        self.head_dim = dims.head_dim
        self.q_size = self.num_heads * dims.head_dim
        self.kv_size = self.num_kv_heads * dims.head_dim
        self.qkv_proj = QKVParallelLinear(dims.hidden_size, dims.head_dim, dims.num_heads,
                                          dims.num_kv_heads, bias=dims.qkv_bias,
                                          prefix=f"{prefix}.qkv_proj")
        self.o_proj = RowParallelLinear(dims.num_heads * dims.head_dim, dims.hidden_size,
                                        bias=dims.o_proj_bias, prefix=f"{prefix}.o_proj")
        self.rotary_emb = get_rope(
            dims.head_dim, max_position=dims.max_position_embeddings,
            rope_parameters={"rope_type": "default", "rope_theta": dims.rope_theta},
            is_neox_style=True)
        self.scale = dims.head_dim**-0.5
        self.attn = DraftKVCacheAttention(self.num_heads, dims.head_dim, self.scale,
                                          num_kv_heads=self.num_kv_heads,
                                          vllm_config=vllm_config, prefix=f"{prefix}.attn")

    def forward(self, positions: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        qkv, _ = self.qkv_proj(x)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q, k = self.rotary_emb(positions, q, k)
        out = torch.empty(n, self.num_heads, self.head_dim, dtype=q.dtype, device=q.device)
        # The cache write and the compressed-layout attention: one op that reads this
        # step's metadata from vLLM's forward context (attention_op.py).
        torch.ops.vllm.vispec_draft_attention(
            q.reshape(n, self.num_heads, self.head_dim),
            k.reshape(n, self.num_kv_heads, self.head_dim),
            v.reshape(n, self.num_kv_heads, self.head_dim), out, self.attn.layer_name)
        out, _ = self.o_proj(out.view(n, self.q_size))
        return out


class DraftMLP(nn.Module):
    def __init__(self, dims: DraftDims, prefix: str) -> None:
        super().__init__()
        self.gate_up_proj = MergedColumnParallelLinear(
            dims.hidden_size, [dims.intermediate_size] * 2, bias=dims.mlp_bias,
            prefix=f"{prefix}.gate_up_proj")
        self.down_proj = RowParallelLinear(dims.intermediate_size, dims.hidden_size,
                                           bias=dims.mlp_bias, prefix=f"{prefix}.down_proj")
        self.act_fn = SiluAndMul()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up, _ = self.gate_up_proj(x)
        out, _ = self.down_proj(self.act_fn(gate_up))
        return out


class DraftDecoderLayer(nn.Module):
    """EAGLE-1's layer 0: no input norm (the fc output goes straight into attention), as
    published; NeMo Automodel's drafts keep the input norm (``dims.input_norm``)."""

    def __init__(self, dims: DraftDims, vllm_config: VllmConfig, prefix: str) -> None:
        super().__init__()
        self.self_attn = DraftAttention(dims, vllm_config, prefix=f"{prefix}.self_attn")
        self.mlp = DraftMLP(dims, prefix=f"{prefix}.mlp")
        self.input_layernorm = (RMSNorm(dims.hidden_size, eps=dims.rms_norm_eps)
                                if dims.input_norm else None)
        self.post_attention_layernorm = RMSNorm(dims.hidden_size, eps=dims.rms_norm_eps)

    def forward(self, positions: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        normed = x if self.input_layernorm is None else self.input_layernorm(x)
        attn = self.self_attn(positions, normed)
        h, residual = self.post_attention_layernorm(attn, x)
        return self.mlp(h) + residual


class ImageAdaptor(nn.Module):
    """ViSpec's image adaptor: ``num_q`` learned queries cross-attend over one image.

    Keys and values are projections of the image's (projected) input embeddings; there is
    no norm, MLP or positional encoding. Rows ``0..num_q-2`` of the output are the image's
    compressed tokens, the last row its global vector.

    Replicated on every tensor-parallel rank on purpose: it runs once per image over a few
    queries, and every rank needs its whole output (the compressed token enters the draft
    sequence as a full hidden vector, the global vector feeds ``img_fc``); splitting it
    would add two collectives per image to save a few MFLOPs.
    """

    def __init__(self, dims: DraftDims, prefix: str) -> None:
        super().__init__()
        self.num_heads = dims.num_heads
        self.head_dim = dims.adaptor_head_dim  # hidden / heads, whatever the layer's is
        h = dims.hidden_size
        self.q = nn.Parameter(torch.empty(dims.num_q, dims.num_heads, self.head_dim))
        self.k_proj = ReplicatedLinear(h, h, bias=dims.qkv_bias, prefix=f"{prefix}.k_proj")
        self.v_proj = ReplicatedLinear(h, h, bias=dims.qkv_bias, prefix=f"{prefix}.v_proj")
        self.o_proj = ReplicatedLinear(h, h, bias=False, prefix=f"{prefix}.o_proj")
        if kernel_dispatch.mode() == "triton":
            # The fused path reads these weights itself. vLLM's CPU linear layers repack
            # and drop their weights after loading unless marked like this (it then uses
            # F.linear); the adaptor runs once per image, so nothing is lost.
            for proj in (self.k_proj, self.v_proj, self.o_proj):
                proj._cpu_skip_gemm_dispatch = True
        self._folded_queries: torch.Tensor | None = None

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """``image_embeds`` [n, H] of one image -> [num_q, H]."""
        if kernel_dispatch.use_image_kernel(image_embeds):
            return self._fused(image_embeds)
        n = image_embeds.shape[0]
        k, _ = self.k_proj(image_embeds)
        v, _ = self.v_proj(image_embeds)
        k = k.view(n, self.num_heads, self.head_dim).transpose(0, 1)
        v = v.view(n, self.num_heads, self.head_dim).transpose(0, 1)
        q = self.q.to(k.dtype).transpose(0, 1)
        pooled = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        out, _ = self.o_proj(pooled.transpose(0, 1).reshape(q.shape[1], -1))
        return out

    def _fused(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """The same output through the fused kernel (kernels/image_compression.py): the key
        projection is folded into the learned queries once, after loading."""
        if self.k_proj.weight.numel() == 0:
            raise kernel_dispatch.KernelUnavailable(
                "the image adaptor's weights were repacked by vLLM's CPU linear layers: set "
                f"{kernel_dispatch.KERNELS_ENV}=triton before the model loads")
        if self._folded_queries is None:
            self._folded_queries = fold_queries(self.q.data, self.k_proj.weight.data)
        n = image_embeds.shape[0]
        cu = torch.tensor([0, n], dtype=torch.int32, device=image_embeds.device)
        pooled = kernel_dispatch.pool_images(self._folded_queries, image_embeds, cu, n)
        out = project_pooled(pooled, self.q.shape[0], self.v_proj.weight, self.v_proj.bias,
                             self.o_proj.weight)
        return out[0].to(image_embeds.dtype)
