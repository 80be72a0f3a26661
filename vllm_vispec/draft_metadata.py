"""The device half of a draft step's metadata: from the host plan (draft_plan.py) and the
runner's device tensors to per-token rows, in batched tensor ops.

Nothing here reads a device tensor back or depends on device data for a shape, so the
draft passes that use it never wait for the device: the plan's arrays go over in one
non-blocking copy per step, sizes come from the host.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from vllm.v1.utils import CpuGpuBuffer

from .draft_plan import ImagePlan


@dataclass
class StepImages:
    """One step's image arrays and kept positions on the device."""

    last: torch.Tensor  # [R, M]
    global_row: torch.Tensor  # [R, M + 1]
    slot_pos: torch.Tensor  # [R, S]
    slot_row: torch.Tensor  # [R, S]
    kept_starts: torch.Tensor  # [R * (M + 1)] int32
    kept_ends: torch.Tensor  # [R * (M + 1)] int32
    cu_kept: torch.Tensor  # [R + 1] int32
    kept_blocks: torch.Tensor  # [R, L] int64
    kept_offsets: torch.Tensor  # [R, L] int64
    kept_pos: torch.Tensor  # [R, L] int64

    def global_rows(self, token_req: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Row of the global vector each token fuses: the latest image before it."""
        count = (self.last[token_req] < positions[:, None]).sum(1)
        return self.global_row[token_req, count]

    def replace_rows(self, token_req: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Row of the compressed token that replaces each token's input (0: none)."""
        match = self.slot_pos[token_req] == positions[:, None]
        return (match * self.slot_row[token_req]).sum(1)

    def kept_ends_below(self, context_lens: torch.Tensor) -> torch.Tensor:
        """The kept intervals' ends, cut at each request's context length (for queries
        that must not see the paged cache past it, as a tree's)."""
        ends = self.kept_ends.view(context_lens.shape[0], -1)
        starts = self.kept_starts.view_as(ends)
        cut = torch.minimum(ends, context_lens[:, None].to(ends.dtype))
        return torch.maximum(cut, starts).flatten()  # empty, not reversed, past the cut


class PlanUpload:
    """The plan's arrays in one staging buffer, copied to the device in one go."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._buffer = None

    def upload(self, arrays: list[np.ndarray]) -> list[torch.Tensor]:
        sizes = [a.size for a in arrays]
        total = sum(sizes)
        if self._buffer is None or self._buffer.cpu.shape[0] < total:
            self._buffer = CpuGpuBuffer(max(total, 2 * (self._buffer.cpu.shape[0]
                                                         if self._buffer else 1024)),
                                        dtype=torch.int64, device=self.device)
        flat = self._buffer.np
        offset = 0
        for a, n in zip(arrays, sizes):
            flat[offset:offset + n] = a.ravel()
            offset += n
        device_flat = self._buffer.copy_to_gpu(total)
        out, offset = [], 0
        for a, n in zip(arrays, sizes):
            out.append(device_flat[offset:offset + n].view(a.shape))
            offset += n
        return out


def step_images(plan: ImagePlan, bounds: np.ndarray, kept_len: int,
                block_table: torch.Tensor, block_size: int, far: int,
                upload: PlanUpload) -> StepImages:
    """``bounds[r]``: a position no query of request ``r`` reaches this step;
    ``kept_len``: the most kept positions below any bound."""
    num_reqs, m = plan.last.shape
    start, stop, last, global_row, slot_pos, slot_row, bound = upload.upload(
        [plan.dropped_start, plan.dropped_stop, plan.last, plan.global_row,
         plan.slot_pos, plan.slot_row, bounds.astype(np.int64)])
    device = start.device
    zero = torch.zeros(num_reqs, 1, dtype=start.dtype, device=device)
    # Interval i of a request runs from the end of image i - 1's dropped slots to the
    # start of image i's; the last is open-ended (padding images make empty ones).
    starts = torch.cat((zero, stop), 1).to(torch.int32).flatten()
    ends = torch.cat((start, zero + far), 1).to(torch.int32).flatten()
    cu_kept = (torch.arange(num_reqs + 1, device=device, dtype=torch.int32) * (m + 1))
    # Kept index j of a request is position j plus the dropped slots of every image
    # whose dropped range starts at or before it in kept order.
    lengths = stop - start
    kept_index_of_range = start - (torch.cumsum(lengths, 1) - lengths)
    j = torch.arange(kept_len, device=device)
    skipped = (kept_index_of_range[:, None, :] <= j[None, :, None]) * lengths[:, None, :]
    positions = j[None, :] + skipped.sum(-1)
    valid = positions < bound[:, None]
    block_index = (positions // block_size).clamp(max=block_table.shape[1] - 1)
    blocks = block_table.gather(1, block_index).long()
    return StepImages(
        last=last, global_row=global_row, slot_pos=slot_pos, slot_row=slot_row,
        kept_starts=starts, kept_ends=ends, cu_kept=cu_kept,
        kept_blocks=blocks, kept_offsets=positions % block_size,
        kept_pos=torch.where(valid, positions, far))


def token_requests(query_start_loc: torch.Tensor, num_reqs: int,
                   num_tokens: int) -> torch.Tensor:
    """Request index of each of ``num_tokens`` tokens (padding tokens: the last)."""
    tokens = torch.arange(num_tokens, device=query_start_loc.device,
                          dtype=query_start_loc.dtype)
    req = torch.searchsorted(query_start_loc[1:num_reqs + 1], tokens, right=True)
    return req.clamp_(max=num_reqs - 1).long()


def first_pass_positions(seq_lens: torch.Tensor, query_start_loc: torch.Tensor,
                         token_req: torch.Tensor, num_reqs: int) -> torch.Tensor:
    """1-D position of each scheduled token (0 for padding tokens): its request's
    sequence length, less the tokens of the request that follow it."""
    tokens = torch.arange(token_req.shape[0], device=token_req.device)
    positions = seq_lens.long()[token_req] - query_start_loc.long()[token_req + 1] + tokens
    return torch.where(tokens < query_start_loc[num_reqs], positions, 0)


def query_rows(query_start_loc: torch.Tensor, token_req: torch.Tensor, num_reqs: int,
               max_query_len: int) -> torch.Tensor:
    """Row of each token in a [num_reqs * max_query_len + 1] padding (the last: none)."""
    tokens = torch.arange(token_req.shape[0], device=token_req.device)
    rows = token_req.long() * max_query_len + tokens - query_start_loc.long()[token_req]
    return torch.where(tokens < query_start_loc[num_reqs], rows, num_reqs * max_query_len)
