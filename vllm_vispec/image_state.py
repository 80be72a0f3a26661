"""Per-request image state of the ViSpec draft: where each image sits, and its summary.

Slot ``j`` of the draft (position ``j``) is an image slot iff token ``j + 1`` is an image
token (EAGLE's one-slot shift), so an image whose placeholder tokens are
``[offset, offset + length)`` covers slots ``[offset - 1, offset + length - 2]``. Its last
``num_q - 1`` slots hold the compressed tokens; the others are dropped from the draft's
sequence. The image's summary (compressed rows and global vector) is computed once, when
the chunk holding its compressed slot is drafted, and kept per request; it is also kept by
the image's content hash, so a request whose image prefix came from the prefix cache (or
that resumes after preemption) finds it without re-encoding.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ImageSlots:
    identifier: str  # vLLM's content hash of the image
    first: int  # first image slot (clamped to 0)
    last: int  # last image slot
    kept: tuple[int, ...]  # compressed slots, ascending

    @property
    def dropped(self) -> range:
        return range(self.first, self.kept[0] if self.kept else self.last + 1)


@dataclass
class ImageSummary:
    compressed: torch.Tensor  # [num_q - 1, H]
    global_vector: torch.Tensor  # [H]


def image_slots(mm_features, num_q: int) -> list[ImageSlots]:
    """The draft slots of every image of a request, in prompt order (videos are left to
    the text path: ViSpec compresses images only)."""
    out = []
    for feature in sorted(mm_features, key=lambda f: f.mm_position.offset):
        if feature.modality != "image":
            continue
        offset, length = feature.mm_position.offset, feature.mm_position.length
        last = offset + length - 2
        kept = tuple(s for s in range(last - (num_q - 2), last + 1) if s >= 0)
        out.append(ImageSlots(feature.identifier, max(offset - 1, 0), last, kept))
    return out


def kept_intervals(images: list[ImageSlots], seq_len: int) -> list[tuple[int, int]]:
    """Half-open intervals of positions ``[0, seq_len)`` that the draft attends to: all
    but the dropped image slots."""
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


class ImageStateStore:
    """Summaries per (request, image) and per image content, bounded by LRU."""

    def __init__(self, max_images_by_content: int = 1024) -> None:
        self.per_request: dict[str, dict[str, ImageSummary]] = {}
        self.by_content: OrderedDict[str, ImageSummary] = OrderedDict()
        self.max_images_by_content = max_images_by_content

    def put(self, req_id: str, identifier: str, summary: ImageSummary) -> None:
        self.per_request.setdefault(req_id, {})[identifier] = summary
        self.by_content[identifier] = summary
        self.by_content.move_to_end(identifier)
        while len(self.by_content) > self.max_images_by_content:
            self.by_content.popitem(last=False)

    def get(self, req_id: str, identifier: str) -> ImageSummary | None:
        summary = self.per_request.get(req_id, {}).get(identifier)
        if summary is None and (summary := self.by_content.get(identifier)) is not None:
            self.per_request.setdefault(req_id, {})[identifier] = summary
        return summary

    def retain(self, live_req_ids) -> None:
        """Frees the state of requests that have ended."""
        for req_id in [r for r in self.per_request if r not in live_req_ids]:
            del self.per_request[req_id]
