"""The batched draft-step metadata (draft_plan.py on the host, draft_metadata.py on the
device) against the per-request rules it replaces: kept intervals, the global vector of
the latest earlier image, the compressed token of each compressed slot."""

from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import torch

from vllm_vispec.draft_metadata import (PlanUpload, first_pass_positions, query_rows,
                                        step_images, token_requests)
from vllm_vispec.draft_plan import (compressed_row, images_to_summarize, kept_counts,
                                    plan_images)
from vllm_vispec.image_state import image_slots

FAR = 4096
BLOCK = 16


def feature(offset, length, identifier):
    return SimpleNamespace(modality="image", identifier=identifier,
                           mm_position=SimpleNamespace(offset=offset, length=length))


def random_batch(rng: random.Random, num_q: int):
    """Requests with 0-3 images each (one at the very start sometimes)."""
    images, rows, seq_lens = [], [], []
    for r in range(rng.randint(1, 6)):
        features, cursor = [], rng.choice([0, 1, 3])
        for i in range(rng.randint(0, 3)):
            length = rng.randint(2, 12)
            features.append(feature(cursor, length, f"r{r}-i{i}"))
            cursor += length + rng.randint(0, 5)
        slots = image_slots(features, num_q)
        images.append(slots)
        rows.append([rng.choice([0, 1 + len(rows) * 4 + i]) for i in range(len(slots))])
        seq_lens.append(cursor + rng.randint(1, 20))
    return images, rows, np.array(seq_lens, dtype=np.int64)


def kept_intervals(images, seq_len: int) -> list[tuple[int, int]]:
    """Half-open intervals of positions ``[0, seq_len)`` that the draft attends to: all
    but the dropped image slots (the rule per request, that the batched arrays must
    reproduce)."""
    out, cursor = [], 0
    for image in images:  # in prompt order, disjoint
        d = image.dropped
        if d.start >= seq_len:
            break
        if d.start > cursor:
            out.append((cursor, d.start))
        cursor = max(cursor, d.stop)
    if cursor < seq_len:
        out.append((cursor, seq_len))
    return out


def test_kept_intervals_skip_dropped_slots_only():
    images = image_slots([feature(2, 4, "a"), feature(9, 3, "b")], num_q=2)
    # a: slots 1..4, keeps 4; b: slots 8..10, keeps 10.
    assert kept_intervals(images, 14) == [(0, 1), (4, 8), (10, 14)]
    assert kept_intervals(images, 3) == [(0, 1)]
    assert kept_intervals([], 5) == [(0, 5)]


def expected_global_row(images, rows, position):
    """The old per-request rule: image i's vector for slots after it, up to the next
    image's last slot."""
    out = 0
    for i, image in enumerate(images):
        upper = images[i + 1].last if i + 1 < len(images) else None
        if position > image.last and (upper is None or position <= upper):
            out = rows[i]
    return out


def expected_replace_row(images, rows, position, num_compressed):
    for image, row in zip(images, rows):
        for j, slot in enumerate(image.kept):
            if slot == position:
                return compressed_row(row, j, num_compressed)
    return 0


def test_plan_rows_and_kept_positions_match_the_per_request_rules():
    rng = random.Random(0)
    for trial in range(40):
        num_q = rng.choice([2, 3])
        images, rows, seq_lens = random_batch(rng, num_q)
        num_reqs = len(images)
        plan = plan_images(images, rows, num_q - 1, far=FAR)
        bounds = seq_lens + 3
        kept_len = max(int(kept_counts(plan, bounds).max()), 1)
        max_blocks = int(bounds.max()) // BLOCK + 1
        block_table = torch.randperm(num_reqs * max_blocks).view(num_reqs, max_blocks)
        block_table = block_table.to(torch.int32)
        step = step_images(plan, bounds, kept_len, block_table, BLOCK, FAR,
                           PlanUpload(torch.device("cpu")))
        for r in range(num_reqs):
            kept = [p for a, b in kept_intervals(images[r], int(bounds[r]))
                    for p in range(a, b)]
            assert kept_counts(plan, bounds)[r] == len(kept)
            got = step.kept_pos[r][step.kept_pos[r] < FAR].tolist()
            assert got == kept, (trial, r)
            blocks = step.kept_blocks[r, :len(kept)].tolist()
            offsets = step.kept_offsets[r, :len(kept)].tolist()
            assert blocks == [int(block_table[r, p // BLOCK]) for p in kept]
            assert offsets == [p % BLOCK for p in kept]
            # The intervals (open-ended) cover the same positions below the bound.
            m1 = step.cu_kept[r + 1] - step.cu_kept[r]
            starts = step.kept_starts[step.cu_kept[r]:step.cu_kept[r] + m1].tolist()
            ends = step.kept_ends[step.cu_kept[r]:step.cu_kept[r] + m1].tolist()
            covered = [p for a, b in zip(starts, ends) for p in range(a, min(b, bounds[r]))]
            assert covered == kept
        # Per-token rows over every position of every request.
        token_req = torch.cat([torch.full((int(bounds[r]),), r) for r in range(num_reqs)])
        positions = torch.cat([torch.arange(int(bounds[r])) for r in range(num_reqs)])
        g = step.global_rows(token_req, positions).tolist()
        c = step.replace_rows(token_req, positions).tolist()
        for t, (r, p) in enumerate(zip(token_req.tolist(), positions.tolist())):
            assert g[t] == expected_global_row(images[r], rows[r], p), (trial, r, p)
            assert c[t] == expected_replace_row(images[r], rows[r], p, num_q - 1)


def test_tree_context_cuts_the_open_intervals():
    images = [image_slots([feature(3, 6, "a")], 2)]
    plan = plan_images(images, [[1]], 1, far=FAR)
    step = step_images(plan, np.array([20]), 20, torch.zeros(1, 2, dtype=torch.int32),
                       BLOCK, FAR, PlanUpload(torch.device("cpu")))
    ends = step.kept_ends_below(torch.tensor([12]))
    covered = [p for a, b in zip(step.kept_starts.tolist(), ends.tolist())
               for p in range(a, b)]
    assert covered == [p for a, b in kept_intervals(images[0], 12) for p in range(a, b)]


def test_token_positions_and_query_rows_from_device_tensors():
    qsl = torch.tensor([0, 3, 4, 9], dtype=torch.int32)
    seq_lens = torch.tensor([10, 5, 30], dtype=torch.int32)
    token_req = token_requests(qsl, 3, 11)  # two padding tokens
    assert token_req.tolist() == [0, 0, 0, 1, 2, 2, 2, 2, 2, 2, 2]
    positions = first_pass_positions(seq_lens, qsl, token_req, 3)
    assert positions.tolist() == [7, 8, 9, 4, 25, 26, 27, 28, 29, 0, 0]
    rows = query_rows(qsl, token_req, 3, max_query_len=5)
    assert rows.tolist() == [0, 1, 2, 5, 10, 11, 12, 13, 14, 15, 15]


def test_images_to_summarize_takes_those_whose_last_compressed_slot_is_queried():
    images = image_slots([feature(2, 4, "a"), feature(9, 3, "b")], 2)
    assert [images[i].identifier for i in images_to_summarize(images, 0, 5)] == ["a"]
    assert images_to_summarize(images, 0, 4) == []  # a's compressed slot is 4
    assert [images[i].identifier for i in images_to_summarize(images, 5, 20)] == ["b"]
