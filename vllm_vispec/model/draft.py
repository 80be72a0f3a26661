"""The ViSpec draft as a vLLM model class, driven by vLLM's EAGLE proposer.

Layout (published checkpoints): ``fc`` over [token embedding, target feature], one decoder
layer without input norm, no final norm, the target's lm_head and embedding (shared by
vLLM's proposer), the image adaptor ``imadpt`` and ``img_fc``, which fuses the latest
image's global vector into every text feature: ``img_fc(cat(h, g))``. NeMo Automodel's
drafts (automodel_layout.py) are renamed onto these names as they load and may add an
input norm, a final norm and biases.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from vllm.compilation.decorators import support_torch_compile
from vllm.config import VllmConfig
from vllm.model_executor.layers.logits_processor import LogitsProcessor
from vllm.model_executor.layers.vocab_parallel_embedding import VocabParallelEmbedding
from vllm.model_executor.model_loader.weight_utils import default_weight_loader
from vllm.model_executor.models.interfaces import SupportsMultiModalEmbeddings
from vllm.model_executor.models.utils import _merge_multimodal_embeddings

from vllm.model_executor.layers.layernorm import RMSNorm

from .feature_fusion import FusedFeatures
from .hf_config import dims_from_hf_config
from .image_inputs import ImageInputs
from .layers import DraftDecoderLayer, ImageAdaptor
from .layout_registry import recognise
from .visual_features import embedding_layer_features

# Checkpoint names of the projections vLLM stores fused, with their shard ids.
_STACKED = (
    (".self_attn.q_proj.", ".self_attn.qkv_proj.", "q"),
    (".self_attn.k_proj.", ".self_attn.qkv_proj.", "k"),
    (".self_attn.v_proj.", ".self_attn.qkv_proj.", "v"),
    (".mlp.gate_proj.", ".mlp.gate_up_proj.", 0),
    (".mlp.up_proj.", ".mlp.gate_up_proj.", 1),
)


@support_torch_compile(dynamic_arg_dims={"input_embeds": 0, "positions": 0,
                                         "hidden_states": 0})
class VispecDraftModel(nn.Module):
    """The draft body. Checkpoint keys map onto it one to one (``layers.0`` aside).

    Compiled through vLLM's torch.compile integration (unless vLLM runs eagerly): its
    inputs are tensors, per-step state sits in persistent buffers (image_inputs.py) and
    the attention step is a registered op (attention_op.py)."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "", layer_id: int = 0) -> None:
        super().__init__()
        hf_config = vllm_config.speculative_config.draft_model_config.hf_config
        self.dims = dims = dims_from_hf_config(hf_config)
        h = dims.hidden_size
        self.embed_tokens = VocabParallelEmbedding(dims.vocab_size, h,
                                                   prefix=f"{prefix}.embed_tokens")
        # The attention layer's name must not collide with the target's layers.
        self.layers = nn.ModuleList([
            DraftDecoderLayer(dims, vllm_config, prefix=f"{prefix}.layers.{layer_id}")])
        # Automodel's drafts end with a norm: its output is the fed-back feature too.
        self.norm = RMSNorm(h, eps=dims.rms_norm_eps) if dims.final_norm else None
        # fc and img_fc of the checkpoint, folded (feature_fusion.py).
        self.fusion = FusedFeatures(h, prefix=f"{prefix}.fusion")
        self.imadpt = ImageAdaptor(dims, prefix=f"{prefix}.imadpt")
        scheduler = vllm_config.scheduler_config
        self.image_inputs = ImageInputs(
            capacity=max(1024, 8 * scheduler.max_num_seqs),
            num_compressed=dims.num_q - 1, hidden_size=h,
            # a forward's tokens: a scheduled batch, or a tree level of every request
            max_num_tokens=scheduler.max_num_batched_tokens + 64 * scheduler.max_num_seqs)

    def store_image(self, row: int, summary: torch.Tensor) -> None:
        """An image's adaptor output [num_q, H] into row ``row`` of the image tables: its
        compressed tokens, and its global vector as the fused feature's bias."""
        self.image_inputs.store(row, summary[:-1], self.fusion.image_bias(summary[-1]))

    def finish_loading(self) -> None:
        self.image_inputs.set_no_image_bias(self.fusion.image_offset)

    def forward(self, input_embeds: torch.Tensor, positions: torch.Tensor,
                hidden_states: torch.Tensor) -> torch.Tensor:
        image_bias = self.image_inputs.image_bias_rows(input_embeds.shape[0])
        x = self.fusion(input_embeds, hidden_states, image_bias)
        # Compressed image tokens enter the layer directly (no fc, no target feature).
        x = self.image_inputs.replace_inputs(x)
        for layer in self.layers:
            x = layer(positions, x)
        return x if self.norm is None else self.norm(x)


class EagleVispecForCausalLM(nn.Module, SupportsMultiModalEmbeddings):
    """vLLM entry class of the ViSpec draft (the name starts with ``Eagle`` so vLLM's
    EAGLE config keeps it)."""

    # The checkpoint's embedding is a frozen copy of the target's and the draft scores
    # with the target's lm_head: vLLM's proposer shares both from the target.
    has_own_embed_tokens = False
    has_own_lm_head = False

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        self.config = vllm_config.speculative_config.draft_model_config.hf_config
        target_layers = vllm_config.model_config.get_num_layers(vllm_config.parallel_config)
        self.model = VispecDraftModel(vllm_config=vllm_config, prefix="model",
                                      layer_id=target_layers)
        self.logits_processor = LogitsProcessor(self.model.dims.vocab_size)
        self.lm_head: nn.Module | None = None  # the target's, set by the proposer

    def embed_input_ids(self, input_ids: torch.Tensor, multimodal_embeddings=None, *,
                        is_multimodal: torch.Tensor | None = None) -> torch.Tensor:
        embeds = self.model.embed_tokens(input_ids)
        if multimodal_embeddings is None or len(multimodal_embeddings) == 0:
            return embeds
        h = self.model.dims.hidden_size
        features = [embedding_layer_features(e, h) for e in multimodal_embeddings]
        return _merge_multimodal_embeddings(embeds, features, is_multimodal)

    def forward(self, input_ids: torch.Tensor | None, positions: torch.Tensor,
                hidden_states: torch.Tensor, inputs_embeds: torch.Tensor | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor]:
        if inputs_embeds is None:
            inputs_embeds = self.embed_input_ids(input_ids)
        # 1-D token positions (the proposer's): ViSpec's draft uses them even when the
        # target uses M-RoPE.
        out = self.model(inputs_embeds, positions, hidden_states)
        # The draft's output (after the final norm, where it has one) is both its feature
        # and what lm_head scores.
        return out, out

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.logits_processor(self.lm_head, hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Strict: the checkpoint must hold exactly its layout's tensors for these dims;
        they load by their published names."""
        weights = list(weights)
        found = {name: tuple(w.shape) for name, w in weights}
        where = getattr(self.config, "vispec", {}).get("source", "(draft)")
        layout = recognise(found, where)
        layout.check(found, self.model.dims, where)
        weights = [(layout.published_name(name), w) for name, w in weights]
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        fusion = {}
        for name, tensor in weights:
            if name.split(".")[0] in ("fc", "img_fc"):
                fusion[name] = tensor
                continue
            target = "model." + name
            shard = None
            for ckpt_part, param_part, shard_id in _STACKED:
                if ckpt_part in target:
                    target, shard = target.replace(ckpt_part, param_part), shard_id
                    break
            param = params[target]
            loader = getattr(param, "weight_loader", default_weight_loader)
            if shard is None:
                loader(param, tensor)
            else:
                loader(param, tensor, shard)
            loaded.add(target)
        self.model.fusion.load(fusion["fc.weight"], fusion.get("fc.bias"),
                               fusion["img_fc.weight"], fusion.get("img_fc.bias"))
        self.model.finish_loading()
        loaded.add("model.fusion.proj.weight")
        return loaded
