"""The ViSpec proposer: vLLM's EAGLE proposer plus ViSpec's per-request image state.

vLLM's EAGLE proposer runs the draft (a first pass over the target's new tokens, then one
pass per further draft token). This subclass adds, for every pass, what ViSpec's draft
needs and vLLM does not give:

- 1-D token positions (ViSpec drafts use them even for M-RoPE targets such as Qwen2.5-VL);
- each image's summary, computed from the target's encoder output when the chunk holding
  its compressed slot is drafted, and the compressed tokens placed in that slot;
- the global vector of the latest earlier image for every slot (zero before any image);
- attention metadata that reads only the kept slots of each request;
- with ``"tree"`` in the config, EAGLE-2 dynamic trees (tree/), or a chain or nothing
  under load.
"""

from __future__ import annotations

import torch
from vllm.logger import init_logger
from vllm.v1.spec_decode.eagle import EagleProposer

from .image_state import ImageSlots, ImageStateStore, ImageSummary, image_slots, kept_intervals
from .model.compressed_attention import CompressedAttentionMetadata, TreeRows
from .model.hf_config import drafting_from_hf_config
from .model.step_inputs import DraftStepInputs
from .tree.dynamic_tree import DraftTree, TreeGrowth
from .tree.options import TreeOptions
from .tree.target_step import TreeStep, plain_sampling

logger = init_logger(__name__)


class VispecProposer(EagleProposer):

    def __init__(self, vllm_config, device, runner=None):
        super().__init__(vllm_config, device, runner)
        self.vispec_runner = runner
        self.image_store = ImageStateStore()
        self._batch: list[tuple[str, list[ImageSlots]]] = []
        self._attention: CompressedAttentionMetadata | None = None
        self._missing_warned = False
        self._kept_token_indices: torch.Tensor | None = None
        drafting = drafting_from_hf_config(
            vllm_config.speculative_config.draft_model_config.hf_config)
        self.chain_tokens: int = drafting.get("chain_tokens") or self.num_speculative_tokens
        tree = drafting.get("tree")
        self.tree_options = TreeOptions(**tree) if tree else None
        if self.tree_options is not None and vllm_config.scheduler_config.async_scheduling:
            # vLLM's async scheduler reserves total_tokens placeholders every step; a step
            # that drafts a chain or nothing (under load, non-plain sampling) returns fewer.
            raise ValueError(
                'vispec "tree" does not run with async scheduling yet (its chain and off '
                "steps draft fewer tokens than the scheduler reserves): start vLLM with "
                "--no-async-scheduling (LLM(..., async_scheduling=False)), or drop \"tree\" "
                "to draft chains, which do run with async scheduling.")
        self.trees: dict[str, DraftTree] = {}  # the tree each request was last given
        self.accepted_step: TreeStep | None = None  # set by the tree sampler patch
        self._first_hidden: torch.Tensor | None = None
        self.mode_counts = {"tree": 0, "chain": 0, "off": 0}  # drafting steps by mode
        self._target_kv_group: int | None = None
        self._target_kv_caches: list[tuple[torch.Tensor, str]] | None = None

    # ---- per propose() call ---------------------------------------------------------------
    def propose(self, num_speculative_tokens, target_token_ids, target_positions,
                target_hidden_states, next_token_ids, token_indices_to_sample,
                common_attn_metadata, sampling_metadata, mm_embed_inputs=None,
                num_rejected_tokens_gpu=None, slot_mappings=None):
        runner = self.vispec_runner
        num_q = self._draft().dims.num_q
        self.image_store.retain(runner.requests)
        req_ids = runner.input_batch.req_ids[:common_attn_metadata.num_reqs]
        self._batch = [(req_id, image_slots(runner.requests[req_id].mm_features, num_q))
                       for req_id in req_ids]
        self.trees = {r: t for r, t in self.trees.items() if r in runner.requests}
        step, self.accepted_step = self.accepted_step, None
        if step is not None:
            # Lay each accepted tree path right after its root, as for a chain.
            dst, src = step.chain_rows()
            if dst:
                dst_t = torch.tensor(dst, device=target_token_ids.device)
                src_t = torch.tensor(src, device=target_token_ids.device)
                target_token_ids[dst_t] = target_token_ids[src_t].clone()
                target_hidden_states[dst_t] = target_hidden_states[src_t].clone()
        mode = self._drafting_mode(req_ids)
        self.mode_counts[mode] += 1
        if mode != "tree":
            for req_id in req_ids:
                self.trees.pop(req_id, None)
            num_speculative_tokens = (0 if mode == "off"
                                      else min(self.chain_tokens, num_speculative_tokens))
        # 1-D token positions for the draft (the target's may be M-RoPE).
        target_positions = self._token_positions(common_attn_metadata,
                                                 target_token_ids.shape[0])
        kept, self._kept_token_indices = self._kept_token_indices, None
        if mm_embed_inputs is not None and kept is not None:
            # Without the padded drafter batch, vLLM drops rejected tokens from the draft's
            # inputs but gathers the image-embedding mask over all scheduled tokens;
            # select the kept tokens' entries (rejected tokens are never image tokens).
            embeds, is_mm = mm_embed_inputs
            mm_embed_inputs = (embeds, is_mm[kept.to(is_mm.device).long()])
        if mode != "tree":
            return super().propose(
                num_speculative_tokens, target_token_ids, target_positions,
                target_hidden_states, next_token_ids, token_indices_to_sample,
                common_attn_metadata, sampling_metadata, mm_embed_inputs,
                num_rejected_tokens_gpu, slot_mappings)
        # The first pass (vLLM's, one draft token) leaves the draft's feature at each
        # request's last token in _first_hidden; the tree grows from there.
        self._first_hidden = None
        super().propose(1, target_token_ids, target_positions, target_hidden_states,
                        next_token_ids, token_indices_to_sample, common_attn_metadata,
                        sampling_metadata, mm_embed_inputs, num_rejected_tokens_gpu,
                        slot_mappings)
        trees = self._grow_trees(common_attn_metadata, token_indices_to_sample)
        for req_id, tree in zip(req_ids, trees):
            self.trees[req_id] = tree
        return torch.tensor([t.tokens for t in trees], dtype=torch.int64,
                            device=target_token_ids.device)

    def _sample_draft_tokens(self, hidden_states, sampling_metadata):
        self._first_hidden = hidden_states
        return super()._sample_draft_tokens(hidden_states, sampling_metadata)

    # ---- trees ---------------------------------------------------------------------------
    def _drafting_mode(self, req_ids) -> str:
        """"tree", "chain" or "off" for this step."""
        if self.tree_options is None:
            return "chain"
        mode = self.tree_options.mode(len(req_ids))
        if mode == "tree" and not plain_sampling(
                self.vispec_runner.input_batch.sampling_metadata,
                [self.vispec_runner.requests[r] for r in req_ids]):
            return "chain"  # tree verification implements plain sampling only
        return mode

    def target_kv_group(self, runner) -> int:
        """The KV cache group of the target's layers (fixed once the caches exist)."""
        if self._target_kv_group is None:
            self._target_kv_group = next(
                (gid for gid, group in enumerate(runner.kv_cache_config.kv_cache_groups)
                 if any(name not in self._draft_attn_layer_names
                        for name in group.layer_names)), None)
            if self._target_kv_group is None:
                raise RuntimeError("vispec: no KV cache group holds the target's layers")
        return self._target_kv_group

    def target_kv_caches(self, runner) -> list[tuple[torch.Tensor, str]]:
        """(cache, CPU attention ISA) of every target attention layer, each cache once
        (fixed once the caches exist)."""
        if self._target_kv_caches is None:
            self._target_kv_caches = self._find_target_kv_caches(runner)
        return self._target_kv_caches

    def _find_target_kv_caches(self, runner) -> list[tuple[torch.Tensor, str]]:
        out, seen = [], set()
        context = runner.compilation_config.static_forward_context
        for group in runner.kv_cache_config.kv_cache_groups:
            for name in group.layer_names:
                layer = context.get(name)
                if name in self._draft_attn_layer_names or layer is None:
                    continue
                kv = layer.kv_cache
                if isinstance(kv, torch.Tensor) and kv.data_ptr() not in seen:
                    seen.add(kv.data_ptr())
                    out.append((kv, layer.isa))
        return out

    @torch.inference_mode()
    def _grow_trees(self, cad, token_indices_to_sample) -> list[DraftTree]:
        """EAGLE-2 expansion: ``depth`` draft passes over each level's ``top_k`` best
        nodes; each node attends to its request's context and its own path."""
        options, draft = self.tree_options, self._draft()
        k, dims = options.top_k, draft.dims
        first = self._first_hidden
        batch = first.shape[0]
        growth = TreeGrowth.start(self.model.compute_logits(first).log_softmax(-1), k)
        last_pos = self.positions[token_indices_to_sample[:batch]].long()
        device = first.device
        intervals = [kept_intervals(images, int(last_pos[r]) + 1)
                     for r, (_, images) in enumerate(self._batch)]
        flat = [iv for req in intervals for iv in req]
        cu_kept = [0]
        for req in intervals:
            cu_kept.append(cu_kept[-1] + len(req))
        rows_per_req = k * options.expansions
        kv_heads = draft.layers[0].self_attn.num_kv_heads  # this tensor-parallel rank's
        tree_key = torch.zeros(batch * rows_per_req, kv_heads, dims.head_dim,
                               dtype=first.dtype, device=device)
        tree_value = torch.zeros_like(tree_key)
        row_of = torch.full((batch, growth.tokens.shape[1] + options.expansions * k * k), -1,
                            dtype=torch.long)
        row_bits = torch.zeros(batch, rows_per_req, dtype=torch.int64)
        row_features = first.new_zeros(batch, rows_per_req, first.shape[-1])
        arange_b = torch.arange(batch)

        def int32(values) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.int32, device=device)
        for level in range(1, options.expansions + 1):
            frontier = growth.frontier  # [batch, k] candidates of this level
            parents = growth.parents.gather(1, frontier)
            rows = torch.arange((level - 1) * k, level * k).expand(batch, k)
            parent_rows = row_of.gather(1, parents.clamp(min=0))
            if level == 1:
                features = first[:, None].expand(batch, k, first.shape[-1])
                bits = torch.zeros(batch, k, dtype=torch.int64)
            else:
                features = row_features[arange_b[:, None], parent_rows]
                bits = row_bits.gather(1, parent_rows)
            bits = bits | (1 << rows)
            row_bits.scatter_(1, rows, bits)
            row_of.scatter_(1, frontier, rows)
            # contiguous: vLLM's CPU rotary kernel reads positions densely
            positions = (last_pos[:, None] + level).expand(batch, k).flatten().contiguous()
            meta = CompressedAttentionMetadata(
                query_start_loc=[r * k for r in range(batch + 1)],
                query_positions=positions.to(device),
                token_req=torch.arange(batch, dtype=torch.int32).repeat_interleave(k)
                .to(device),
                slot_mapping=torch.full((batch * k,), -1, dtype=torch.long, device=device),
                block_table=cad.block_table_tensor,
                kept_starts=int32([a for a, _ in flat]), kept_ends=int32([b for _, b in flat]),
                cu_kept=int32(cu_kept),
                tree=TreeRows(key=tree_key, value=tree_value,
                              write_rows=(arange_b[:, None] * rows_per_req + rows).flatten()
                              .to(device),
                              start=int32([r * rows_per_req for r in range(batch)]),
                              length=int32([level * k] * batch),
                              anc_bits=bits.flatten().to(device)))
            draft.step = DraftStepInputs(attention=meta, global_vectors=self._global_vectors(meta))
            out, _ = self.model(input_ids=growth.frontier_tokens().flatten().to(device),
                                positions=meta.query_positions,
                                hidden_states=features.reshape(batch * k, -1).contiguous())
            row_features[arange_b[:, None], rows] = out.view(batch, k, -1)
            logprobs = self.model.compute_logits(out).log_softmax(-1)
            growth.extend(logprobs.view(batch, k, -1))
        return growth.select(options.num_nodes)

    def prepare_inputs(self, common_attn_metadata, sampled_token_ids, num_draft_tokens):
        cad, token_indices = super().prepare_inputs(common_attn_metadata, sampled_token_ids,
                                                    num_draft_tokens)
        self._kept_token_indices = token_indices
        return cad, token_indices

    def prepare_next_token_ids_padded(self, sampled_token_ids, requests, gpu_input_batch,
                                      discard_request_mask):
        next_token_ids, valid_count = super().prepare_next_token_ids_padded(
            sampled_token_ids, requests, gpu_input_batch, discard_request_mask)
        # For a prompt chunk whose sample is discarded, vLLM pairs the chunk's last slot
        # with the prompt's *last* token; the draft's KV at that slot is kept, so pair it
        # with the token that really follows the chunk (what ViSpec's draft sees).
        num_reqs = gpu_input_batch.num_reqs
        discard = discard_request_mask[:num_reqs].cpu().tolist()
        if any(discard):
            seq_lens = self.vispec_runner.seq_lens[:num_reqs].cpu().tolist()
            for i, req_id in enumerate(gpu_input_batch.req_ids[:num_reqs]):
                req = requests[req_id]
                if discard[i] and seq_lens[i] < req.num_prompt_tokens:
                    next_token_ids[i] = req.get_token_id(seq_lens[i])
        return next_token_ids, valid_count

    def initialize_cudagraph_keys(self, cudagraph_mode) -> None:
        # The draft's per-step inputs (image state, compressed-layout metadata) are built
        # in Python for each pass: never capture it in a CUDA graph.
        from vllm.config import CUDAGraphMode
        super().initialize_cudagraph_keys(CUDAGraphMode.NONE)

    def _set_positions(self, num_tokens: int, positions: torch.Tensor):
        # propose() already made them 1-D token positions.
        self.positions[:num_tokens] = positions

    def _draft(self):
        return self.model.model

    @staticmethod
    def _token_positions(cad, num_tokens: int) -> torch.Tensor:
        qsl = cad.query_start_loc_cpu
        query_lens = (qsl[1:] - qsl[:-1]).long()
        seq_lens = cad.seq_lens.cpu().long()
        req = torch.repeat_interleave(torch.arange(len(query_lens)), query_lens)
        offset = torch.arange(int(qsl[-1])) - qsl[:-1].long()[req]
        positions = seq_lens[req] - query_lens[req] + offset
        out = torch.zeros(num_tokens, dtype=torch.long)
        out[:positions.numel()] = positions
        return out.to(cad.seq_lens.device)

    # ---- per forward pass -----------------------------------------------------------------
    def build_per_group_and_layer_attn_metadata(self, common_attn_metadata, draft_index=0):
        result = super().build_per_group_and_layer_attn_metadata(common_attn_metadata,
                                                                 draft_index)
        cad = common_attn_metadata
        qsl = cad.query_start_loc_cpu.tolist()
        num_tokens = qsl[-1]
        seq_lens = cad.seq_lens.cpu().tolist()
        device = cad.seq_lens.device
        intervals = [kept_intervals(images, seq_lens[r])
                     for r, (_, images) in enumerate(self._batch)]
        flat = [iv for req in intervals for iv in req]
        cu_kept = [0]
        for req in intervals:
            cu_kept.append(cu_kept[-1] + len(req))
        query_lens = torch.tensor(qsl[1:]) - torch.tensor(qsl[:-1])

        def int32(values) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.int32).to(device)
        self._attention = CompressedAttentionMetadata(
            query_start_loc=qsl,
            query_positions=self.positions[:num_tokens].long(),
            token_req=torch.repeat_interleave(
                torch.arange(len(query_lens), dtype=torch.int32), query_lens).to(device),
            slot_mapping=cad.slot_mapping[:num_tokens],
            block_table=cad.block_table_tensor,
            kept_starts=int32([a for a, _ in flat]),
            kept_ends=int32([b for _, b in flat]),
            cu_kept=int32(cu_kept),
        )
        if draft_index > 0:
            # Further draft steps: one new slot per request, all text.
            self._draft().step = DraftStepInputs(
                attention=self._attention,
                global_vectors=self._global_vectors(self._attention))
        return result

    def build_model_inputs_first_pass(self, num_tokens, num_input_tokens, mm_embed_inputs):
        model_kwargs, size = super().build_model_inputs_first_pass(
            num_tokens, num_input_tokens, mm_embed_inputs)
        meta = self._attention
        self._summarize_images(meta)
        index, rows = self._compressed_slots(meta)
        self._draft().step = DraftStepInputs(
            attention=meta, global_vectors=self._global_vectors(meta),
            replace_index=index, replace_rows=rows)
        return model_kwargs, size

    # ---- image state ---------------------------------------------------------------------
    def _request_ranges(self, meta: CompressedAttentionMetadata):
        positions = meta.query_positions.cpu()
        for r, (req_id, images) in enumerate(self._batch):
            start, end = meta.query_start_loc[r], meta.query_start_loc[r + 1]
            if end > start:
                yield req_id, images, start, positions[start:end]

    def _summarize_images(self, meta: CompressedAttentionMetadata) -> None:
        """Runs the adaptor on every image whose compressed slot is in this pass."""
        draft = self._draft()
        for req_id, images, _, positions in self._request_ranges(meta):
            lo, hi = int(positions[0]), int(positions[-1])
            for image in images:
                if not image.kept or not (lo <= image.kept[-1] <= hi):
                    continue
                if self.image_store.get(req_id, image.identifier) is not None:
                    continue
                embeds = self.vispec_runner._get_encoder_output_from_cache(image.identifier)
                if embeds is None:
                    continue
                rows = draft.imadpt(embeds.to(draft.fc.weight.dtype))
                self.image_store.put(req_id, image.identifier,
                                     ImageSummary(rows[:-1], rows[-1]))

    def _summary(self, req_id: str, image: ImageSlots) -> ImageSummary | None:
        summary = self.image_store.get(req_id, image.identifier)
        if summary is None and not self._missing_warned:
            self._missing_warned = True
            logger.warning("vispec: no image summary for an image of request %s (its "
                           "encoder output was not available); drafting without it. "
                           "Output stays lossless; acceptance may drop.", req_id)
        return summary

    def _global_vectors(self, meta: CompressedAttentionMetadata) -> torch.Tensor:
        draft = self._draft()
        hidden = draft.dims.hidden_size
        out = torch.zeros(meta.query_positions.shape[0], hidden,
                          dtype=draft.fc.weight.dtype, device=meta.query_positions.device)
        for req_id, images, start, positions in self._request_ranges(meta):
            for i, image in enumerate(images):
                # Slots after this image and up to the next image's last slot use its
                # vector (the next image's own slots are replaced or dropped).
                upper = images[i + 1].last if i + 1 < len(images) else None
                mask = positions > image.last
                if upper is not None:
                    mask &= positions <= upper
                if not bool(mask.any()):
                    continue
                summary = self._summary(req_id, image)
                if summary is not None:
                    idx = start + mask.nonzero().squeeze(1)
                    out[idx.to(out.device)] = summary.global_vector.to(out.dtype)
        return out

    def _compressed_slots(self, meta: CompressedAttentionMetadata):
        index, rows = [], []
        for req_id, images, start, positions in self._request_ranges(meta):
            lo, hi = int(positions[0]), int(positions[-1])
            for image in images:
                for row, slot in enumerate(image.kept):
                    if lo <= slot <= hi:
                        summary = self._summary(req_id, image)
                        if summary is not None:
                            index.append(start + int((positions == slot).nonzero()[0]))
                            rows.append(summary.compressed[row])
        if not index:
            return None, None
        device = meta.query_positions.device
        return torch.tensor(index, device=device), torch.stack(rows)
