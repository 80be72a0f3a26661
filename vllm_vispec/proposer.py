"""The ViSpec proposer: vLLM's EAGLE proposer plus ViSpec's per-request image state.

vLLM's EAGLE proposer runs the draft (a first pass over the target's new tokens, then one
pass per further draft token). This subclass adds, for every pass, what ViSpec's draft
needs and vLLM does not give:

- 1-D token positions (ViSpec drafts use them even for M-RoPE targets such as Qwen2.5-VL);
- each image's summary, computed from the target's encoder output when the chunk holding
  its compressed slot is drafted, and the compressed tokens placed in that slot;
- the global vector of the latest earlier image for every slot (zero before any image);
- attention metadata that reads only the kept slots of each request.
"""

from __future__ import annotations

import torch
from vllm.logger import init_logger
from vllm.v1.spec_decode.eagle import EagleProposer

from .image_state import ImageSlots, ImageStateStore, ImageSummary, image_slots, kept_intervals
from .model.compressed_attention import CompressedAttentionMetadata
from .model.step_inputs import DraftStepInputs

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

    # ---- per propose() call ---------------------------------------------------------------
    def propose(self, num_speculative_tokens, target_token_ids, target_positions,
                target_hidden_states, next_token_ids, token_indices_to_sample,
                common_attn_metadata, sampling_metadata, mm_embed_inputs=None,
                num_rejected_tokens_gpu=None, slot_mappings=None):
        runner = self.vispec_runner
        num_q = self._draft().dims.num_q
        self.image_store.retain(runner.requests)
        self._batch = [(req_id, image_slots(runner.requests[req_id].mm_features, num_q))
                       for req_id in runner.input_batch.req_ids[:common_attn_metadata.num_reqs]]
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
        return super().propose(
            num_speculative_tokens, target_token_ids, target_positions,
            target_hidden_states, next_token_ids, token_indices_to_sample,
            common_attn_metadata, sampling_metadata, mm_embed_inputs,
            num_rejected_tokens_gpu, slot_mappings)

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
