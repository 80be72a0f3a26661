"""The ViSpec proposer: vLLM's EAGLE proposer plus ViSpec's per-request image state.

vLLM's EAGLE proposer runs the draft (a first pass over the target's new tokens, then one
pass per further draft token). This subclass adds what ViSpec's draft needs and vLLM does
not give, in two halves:

- once per step, on the host, from what the runner keeps there: each request's image
  slots, the summaries of images first drafted in this step (the adaptor over the
  target's encoder output, into the draft's image tables), and the batch's image arrays
  (draft_plan.py), sent to the device in one copy;
- per pass, on the device only (draft_metadata.py): 1-D token positions (ViSpec drafts use
  them even for M-RoPE targets), each token's global-vector and compressed-token rows, and
  attention metadata that reads only the kept slots of each request. Nothing is read back,
  so a pass never waits for the device.

With ``"tree"`` in the config, EAGLE-2 dynamic trees (tree/), or a chain or nothing under
load.
"""

from __future__ import annotations

import numpy as np
import torch
from vllm.logger import init_logger
from vllm.v1.spec_decode.eagle import EagleProposer
from vllm.v1.utils import CpuGpuBuffer

from .dp_coordination import without_dp_coordination
from .draft_metadata import (PlanUpload, StepImages, first_pass_positions, query_rows,
                             step_images, token_requests)
from .draft_plan import images_in_use, images_to_summarize, kept_counts, plan_images
from .image_state import ImageSlots, ImageStateStore, compressed_modalities, image_slots
from .model.compressed_attention import CompressedAttentionMetadata
from .model.hf_config import drafting_from_hf_config
from .model.kv_layout import check_kernel_block_sizes
from .model.visual_features import embedding_layer_features
from .tree.dynamic_tree import DraftTree
from .tree.growth import grow_trees
from .tree.options import TreeOptions
from .tree.support import check_tree_engine
from .tree.target_kv import TargetKVCaches
from .tree.target_step import TreeStep, plain_sampling

logger = init_logger(__name__)


class VispecProposer(EagleProposer):

    def __init__(self, vllm_config, device, runner=None):
        super().__init__(vllm_config, device, runner)
        self.vispec_runner = runner
        drafting = drafting_from_hf_config(
            vllm_config.speculative_config.draft_model_config.hf_config)
        self.chain_tokens: int = drafting.get("chain_tokens") or self.num_speculative_tokens
        tree = drafting.get("tree")
        self.tree_options = TreeOptions(**tree) if tree else None
        self.async_scheduling = bool(vllm_config.scheduler_config.async_scheduling)
        self.scheduled_k = self.speculative_config.uses_dynamic_speculative_decoding()
        if self.tree_options is not None and self.async_scheduling and not self.scheduled_k:
            # vLLM's async scheduler reserves each step's drafts before the drafter runs:
            # num_speculative_tokens (the tree's nodes) every step unless vLLM's dynamic
            # schedule says otherwise; a chain or off step chosen here would return fewer.
            raise ValueError(
                'vispec "tree" with async scheduling needs vLLM\'s dynamic speculation '
                'schedule, "num_speculative_tokens_per_batch_size" (e.g. [[1, 1, '
                f"{self.tree_options.num_nodes}], [2, 8, {self.chain_tokens}], [9, 1024, 0]]"
                "), so that the scheduler reserves what each step drafts; or start vLLM "
                "with --no-async-scheduling (LLM(..., async_scheduling=False)); or drop "
                '"tree" to draft chains, which run with async scheduling as they are.')
        if self.tree_options is not None and \
                vllm_config.speculative_config.disable_padded_drafter_batch:
            # Without the padded batch vLLM gathers the accepted rows before propose(),
            # from the sequential rows, not the accepted tree nodes' rows.
            raise ValueError(
                'vispec "tree" needs vLLM\'s padded drafter batch: drop '
                '"disable_padded_drafter_batch" from the speculative config, or drop "tree"')
        self._compressed_modalities = compressed_modalities(
            vllm_config.model_config.hf_config.model_type)
        self.image_store: ImageStateStore | None = None  # once the draft is loaded
        self._request_images: dict[str, tuple[int, list[ImageSlots]]] = {}
        self._plan_key = None
        self._plan = None
        self._upload = PlanUpload(device)
        self._step: StepImages | None = None
        self._step_tokens = 0  # tokens of this step's first pass
        self._step_token_req: torch.Tensor | None = None
        self._step_query_rows: torch.Tensor | None = None
        self._step_max_query_len = 1
        self._missing_warned = False
        self._kept_token_indices: torch.Tensor | None = None
        self.trees: dict[str, DraftTree] = {}  # the tree each request was last given
        self.accepted_step: TreeStep | None = None  # set by the tree sampler patch
        self._first_hidden: torch.Tensor | None = None
        self.mode_counts = {"tree": 0, "chain": 0, "off": 0}  # drafting steps by mode
        self._target_kv: TargetKVCaches | None = None
        self._chunk_next_tokens = CpuGpuBuffer(vllm_config.scheduler_config.max_num_seqs,
                                               dtype=torch.int32, device=device)

    @property
    def draft_layer_names(self):
        return self._draft_attn_layer_names

    # ---- per propose() call ---------------------------------------------------------------
    @without_dp_coordination  # ranks drafting a tree, a chain or nothing never wait
    def propose(self, num_speculative_tokens, target_token_ids, target_positions,
                target_hidden_states, next_token_ids, token_indices_to_sample,
                common_attn_metadata, sampling_metadata, mm_embed_inputs=None,
                num_rejected_tokens_gpu=None, slot_mappings=None):
        cad = common_attn_metadata
        req_ids = self.vispec_runner.input_batch.req_ids[:cad.num_reqs]
        step, self.accepted_step = self.accepted_step, None
        if step is not None:
            # Lay each accepted tree path right after its root, as for a chain.
            # The rows of the target's step: the drafter batch is padded (the unpadded one
            # is refused with trees), so its rows are the step's.
            dst, src = step.chain_moves()
            target_token_ids[dst] = target_token_ids[src].clone()
            target_hidden_states[dst] = target_hidden_states[src].clone()
        mode = self._drafting_mode(req_ids, num_speculative_tokens)
        self.mode_counts[mode] += 1
        if mode != "tree":
            if self.trees:
                self.trees.clear()
            reserved = num_speculative_tokens
            tree_room = self.tree_options is not None and \
                reserved >= self.tree_options.num_nodes
            if mode == "off":
                num_speculative_tokens = 0
            elif self.scheduled_k and not tree_room:
                num_speculative_tokens = reserved  # vLLM's schedule: a chain of its K
            else:  # the configured chain (also where a tree's sampling is not plain)
                num_speculative_tokens = min(self.chain_tokens, reserved)
        else:
            self.trees = {r: t for r, t in self.trees.items()
                          if r in self.vispec_runner.requests}
        num_tokens = target_token_ids.shape[0]
        self._plan_step(cad, req_ids, num_tokens,
                        self.tree_options.expansions + 1 if mode == "tree"
                        else max(num_speculative_tokens, 1))
        target_positions = first_pass_positions(cad.seq_lens, cad.query_start_loc,
                                                self._step_token_req, cad.num_reqs)
        kept, self._kept_token_indices = self._kept_token_indices, None
        if mm_embed_inputs is not None and kept is not None:
            # Without the padded drafter batch, vLLM drops rejected tokens from the draft's
            # inputs but gathers the image-embedding mask over all scheduled tokens;
            # select the kept tokens' entries (rejected tokens are never image tokens).
            embeds, is_mm = mm_embed_inputs
            mm_embed_inputs = (embeds, is_mm[kept.to(is_mm.device).long()])
        if mode != "tree":
            drafts = super().propose(
                num_speculative_tokens, target_token_ids, target_positions,
                target_hidden_states, next_token_ids, token_indices_to_sample,
                cad, sampling_metadata, mm_embed_inputs, num_rejected_tokens_gpu,
                slot_mappings)
            return self._fill_reserved(drafts, reserved, next_token_ids)
        # The first pass (vLLM's, one draft token) leaves the draft's feature at each
        # request's last token in _first_hidden; the tree grows from there.
        self._first_hidden = None
        super().propose(1, target_token_ids, target_positions, target_hidden_states,
                        next_token_ids, token_indices_to_sample, cad, sampling_metadata,
                        mm_embed_inputs, num_rejected_tokens_gpu, slot_mappings)
        first = self._first_hidden
        sample_at = (token_indices_to_sample if token_indices_to_sample is not None
                     else cad.query_start_loc[1:] - 1)
        trees = grow_trees(self, self.tree_options, first, self._step,
                           self.positions[sample_at[:first.shape[0]]].long(),
                           cad.block_table_tensor)
        for req_id, tree in zip(req_ids, trees):
            self.trees[req_id] = tree
        return torch.tensor([t.tokens for t in trees], dtype=torch.int64,
                            device=target_token_ids.device)

    def _fill_reserved(self, drafts: torch.Tensor, reserved: int,
                       next_token_ids: torch.Tensor) -> torch.Tensor:
        """Under async scheduling the runner copies the scheduler's reserved number of
        drafts per request out of this tensor, so it must be that wide: a chain drafted in
        a step reserved for a tree (sampling trees do not verify) repeats its last token
        (the target verifies them like any draft; lossless, and rare)."""
        if not self.async_scheduling or drafts.shape[1] >= reserved:
            return drafts
        last = drafts[:, -1:] if drafts.shape[1] else next_token_ids[:drafts.shape[0], None]
        fill = last.to(drafts.dtype).expand(drafts.shape[0], reserved - drafts.shape[1])
        return torch.cat([drafts, fill], dim=1)

    def _sample_draft_tokens(self, hidden_states, sampling_metadata):
        self._first_hidden = hidden_states
        return super()._sample_draft_tokens(hidden_states, sampling_metadata)

    # ---- the host half: once per step --------------------------------------------------------
    def _plan_step(self, cad, req_ids, num_tokens: int, passes: int) -> None:
        """Image slots, new image summaries and the batch's image arrays for this step,
        from host state only; ``passes`` bounds how far past each sequence its queries go."""
        runner, draft = self.vispec_runner, self._draft()
        num_reqs = cad.num_reqs
        store = self._store()
        if any(r not in runner.requests for r in store.per_request):
            store.retain(runner.requests)
        if len(self._request_images) > len(runner.requests):
            for req_id in [r for r in self._request_images if r not in runner.requests]:
                del self._request_images[req_id]
        qsl = cad.query_start_loc_cpu.numpy()[:num_reqs + 1]
        seq_lens = self._host_seq_lens(cad, num_reqs)
        images = [self._images_of(req_id) for req_id in req_ids]
        for r, req_images in enumerate(images):
            if req_images:
                self._summarize(req_ids[r], req_images,
                                int(seq_lens[r] - (qsl[r + 1] - qsl[r])), int(seq_lens[r]))
        def plan_key():
            return tuple(req_ids), store.version, tuple(map(id, images))
        if plan_key() != self._plan_key:
            rows = [[store.row(req_id, image.identifier) for image in req_images]
                    for req_id, req_images in zip(req_ids, images)]
            self._warn_if_missing(req_ids, images, rows, seq_lens)
            self._plan = plan_images(images, rows, draft.image_inputs.num_compressed,
                                     far=self.max_model_len)
            # After the lookups: a row adopted by content bumps the store's version.
            self._plan_key = plan_key()
        bounds = np.minimum(seq_lens + passes, self.max_model_len)
        kept_len = max(int(kept_counts(self._plan, bounds).max(initial=0)), 1)
        self._step = step_images(self._plan, bounds, kept_len, cad.block_table_tensor,
                                 self.block_size, self.max_model_len, self._upload)
        self._step_tokens = num_tokens
        query_lens = qsl[1:] - qsl[:-1]
        self._step_max_query_len = max(int(query_lens.max(initial=1)), 1)
        self._step_token_req = token_requests(cad.query_start_loc, num_reqs, num_tokens)
        dense = (num_tokens == qsl[-1] == num_reqs * self._step_max_query_len
                 and bool((query_lens == self._step_max_query_len).all()))
        self._step_query_rows = None if dense else query_rows(
            cad.query_start_loc, self._step_token_req, num_reqs, self._step_max_query_len)

    def _host_seq_lens(self, cad, num_reqs: int) -> np.ndarray:
        """Each sequence's length after this step, from the host: exact for prompt
        chunks, an upper bound under async scheduling (all drafts accepted)."""
        bound = cad.seq_lens_cpu_upper_bound
        if bound is None:
            bound = self.vispec_runner.optimistic_seq_lens_cpu
        return bound[:num_reqs].numpy().astype(np.int64)

    def _images_of(self, req_id: str) -> list[ImageSlots]:
        """The request's image slots, recomputed only when its images change."""
        features = self.vispec_runner.requests[req_id].mm_features
        cached = self._request_images.get(req_id)
        if cached is None or cached[0] != len(features):
            cached = (len(features), image_slots(features, self._draft().dims.num_q,
                                                 self._compressed_modalities))
            self._request_images[req_id] = cached
        return cached[1]

    def _summarize(self, req_id: str, images: list[ImageSlots], query_start: int,
                   query_end: int) -> None:
        """Runs the adaptor on every image whose compressed slot is in this pass."""
        store, draft = self._store(), self._draft()
        for i in images_to_summarize(images, query_start, query_end):
            image = images[i]
            if store.row(req_id, image.identifier):
                continue
            embeds = self.vispec_runner._get_encoder_output_from_cache(image.identifier)
            if embeds is None:
                continue
            row = store.allocate(req_id, image.identifier)
            if row:
                embeds = embedding_layer_features(embeds, draft.dims.hidden_size)
                draft.store_image(row, draft.imadpt(embeds.to(draft.image_inputs.dtype)))

    def _warn_if_missing(self, req_ids, images, rows, seq_lens) -> None:
        if self._missing_warned:
            return
        for r, (req_images, req_rows) in enumerate(zip(images, rows)):
            if any(req_rows[i] == 0 for i in images_in_use(req_images, int(seq_lens[r]))):
                self._missing_warned = True
                logger.warning("vispec: no image summary for an image of request %s (its "
                               "encoder output was not available); drafting without it. "
                               "Output stays lossless; acceptance may drop.", req_ids[r])
                return

    def _store(self) -> ImageStateStore:
        if self.image_store is None:
            self.image_store = ImageStateStore(self._draft().image_inputs.capacity)
        return self.image_store

    # ---- the device half: per pass -------------------------------------------------------
    def build_per_group_and_layer_attn_metadata(self, common_attn_metadata, draft_index=0):
        """The draft's own attention metadata (vLLM's draft-layer metadata is never
        read: the draft does its own attention), and its image rows for this pass."""
        cad, step, inputs = common_attn_metadata, self._step, self._draft().image_inputs
        if draft_index == 0:
            n = self._step_tokens
            token_req, rows = self._step_token_req, self._step_query_rows
            max_query_len = self._step_max_query_len
        else:  # one new token per request, all text (each sees itself)
            n = cad.num_reqs
            token_req = self.arange[:n].long()
            rows, max_query_len = None, 1
        positions = self.positions[:n]
        inputs.global_rows[:n] = step.global_rows(token_req, positions)
        if draft_index == 0:
            inputs.replace_rows[:n] = step.replace_rows(token_req, positions)
        else:
            inputs.replace_rows[:n] = 0
        meta = CompressedAttentionMetadata(
            query_positions=positions.long(), token_req=token_req.to(torch.int32),
            slot_mapping=cad.slot_mapping[:n], block_table=cad.block_table_tensor,
            kept_starts=step.kept_starts, kept_ends=step.kept_ends, cu_kept=step.cu_kept,
            kept_blocks=step.kept_blocks, kept_offsets=step.kept_offsets,
            kept_pos=step.kept_pos, query_rows=rows, max_query_len=max_query_len,
            blind_rows=draft_index == 0)
        return [], {name: meta for name in self._draft_attn_layer_names}

    def _set_positions(self, num_tokens: int, positions: torch.Tensor):
        # propose() already made them 1-D token positions.
        self.positions[:num_tokens] = positions

    # ---- vLLM hooks around the draft -----------------------------------------------------
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
        # with the token that really follows the chunk (what ViSpec's draft sees). Host
        # mirrors only: the runner's discard mask and (exact for prompt chunks) lengths.
        runner = self.vispec_runner
        num_reqs = gpu_input_batch.num_reqs
        discard = runner.discard_request_mask.np[:num_reqs]
        if not discard.any():
            return next_token_ids, valid_count
        seq_lens = runner.optimistic_seq_lens_cpu[:num_reqs].numpy()
        chunk_next = self._chunk_next_tokens
        chunk = np.zeros(num_reqs, dtype=bool)
        for i in np.flatnonzero(discard):
            req = requests[gpu_input_batch.req_ids[i]]
            if seq_lens[i] < req.num_prompt_tokens:
                chunk_next.np[i] = req.get_token_id(int(seq_lens[i]))
                chunk[i] = True
        if chunk.any():
            chunk_next.np[:num_reqs][~chunk] = -1
            fixed = chunk_next.copy_to_gpu(num_reqs).to(next_token_ids.dtype)
            next_token_ids = torch.where(fixed >= 0, fixed, next_token_ids)
        return next_token_ids, valid_count

    @without_dp_coordination  # as propose(): idle ranks wait for no one either
    def dummy_run(self, num_tokens, use_cudagraphs=True, is_graph_capturing=False,
                  slot_mappings=None):
        # vLLM's dummy passes follow num_speculative_tokens, which propose() leaves at the
        # last step's K (1 after a tree's first pass); an idle step runs the most passes a
        # step of this config drafts instead (not vLLM's K: a tree's node count).
        self.num_speculative_tokens = self._most_draft_passes()
        super().dummy_run(num_tokens, use_cudagraphs, is_graph_capturing, slot_mappings)

    def _most_draft_passes(self) -> int:
        if self.tree_options is None:
            return self.chain_tokens
        return max(self.chain_tokens, self.tree_options.expansions + 1)

    def initialize_cudagraph_keys(self, cudagraph_mode) -> None:
        # The draft compiles, but its attention op is not among vLLM's piecewise
        # splitting ops, so a captured graph would freeze one step's metadata: no CUDA
        # graphs for the draft.
        from vllm.config import CUDAGraphMode
        super().initialize_cudagraph_keys(CUDAGraphMode.NONE)

    # ---- trees ---------------------------------------------------------------------------
    def _drafting_mode(self, req_ids, num_speculative_tokens: int) -> str:
        """"tree", "chain" or "off" for this step. ``num_speculative_tokens`` is the K
        vLLM's scheduler gave the step: its dynamic schedule's where one is set, which
        then decides (tree/options.py), else the configured maximum."""
        if num_speculative_tokens == 0:
            return "off"
        if self.tree_options is None:
            return "chain"
        if self.speculative_config.uses_dynamic_speculative_decoding():
            mode = self.tree_options.mode_for_tokens(num_speculative_tokens)
        else:
            mode = self.tree_options.mode(len(req_ids))
        if mode == "tree" and not plain_sampling(
                self.vispec_runner.input_batch.sampling_metadata,
                [self.vispec_runner.requests[r] for r in req_ids]):
            return "chain"  # tree verification implements plain sampling only
        return mode

    def _target_kv_lookup(self) -> TargetKVCaches:
        # Lazy: the draft's layer names are known once vLLM has loaded the draft.
        if self._target_kv is None:
            self._target_kv = TargetKVCaches(self._draft_attn_layer_names)
        return self._target_kv

    def target_kv_group(self, runner) -> int:
        return self._target_kv_lookup().group(runner)

    def target_kv_views(self, runner) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return self._target_kv_lookup().views(runner)

    def load_model(self, target_model) -> None:
        super().load_model(target_model)
        if self.tree_options is not None:
            # At start-up, not at the first tree step: a backend the patches do not
            # cover would attend tree rows causally and change the output.
            check_tree_engine(self.vllm_config,
                              self._target_kv_lookup().target_layers(self.vispec_runner))

    def initialize_attn_backend(self, kv_cache_config, kernel_block_sizes=None) -> None:
        super().initialize_attn_backend(kv_cache_config, kernel_block_sizes)
        check_kernel_block_sizes(kv_cache_config, kernel_block_sizes)

    def _draft(self):
        return self.model.model
