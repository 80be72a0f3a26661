"""Per-request image state of the ViSpec draft: where each image sits, and its summary.

A Qwen2.5-VL video counts as one image: its tokens (every frame's) are one span with one
summary, as in the authors' code, whose Qwen2.5-VL path marks a video's tokens as an
image's (the paper's video results drafted that way); prompts mixing images and such
videos never get here (refused up front: patches/media_mix.py). A Qwen3-VL video is not
one run of vision tokens (each frame follows its timestamp, ``<0.5 seconds>``, in text),
and Qwen3-VL's drafts (NeMo Automodel's) compress image tokens only: its video tokens
stay on the text path, each taking its own visual feature, as Automodel trains them.

Slot ``j`` of the draft (position ``j``) is an image slot iff token ``j + 1`` is an image
token (EAGLE's one-slot shift), so an image whose placeholder tokens are
``[offset, offset + length)`` covers slots ``[offset - 1, offset + length - 2]``. Its last
``num_q - 1`` slots hold the compressed tokens; the others are dropped from the draft's
sequence. The image's summary (compressed rows and global vector) is computed once, when
the chunk holding its compressed slot is drafted, into a row of the draft's image tables
(model/image_tables.py); :class:`ImageStateStore` keeps which row, per request and by
the image's content hash.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class ImageSlots:
    identifier: str  # vLLM's content hash of the image or video
    first: int  # first image slot (clamped to 0)
    last: int  # last image slot
    kept: tuple[int, ...]  # compressed slots, ascending

    @property
    def dropped(self) -> range:
        return range(self.first, self.kept[0] if self.kept else self.last + 1)


# vLLM's modalities the draft compresses; any other (audio) stays on the text path.
COMPRESSED_MODALITIES = ("image", "video")
# Targets whose videos stay on the text path (see above), by HF model_type.
VIDEO_AS_TEXT_TARGETS = ("qwen3_vl", "qwen3_vl_moe")


def compressed_modalities(target_model_type: str) -> tuple[str, ...]:
    if target_model_type in VIDEO_AS_TEXT_TARGETS:
        return ("image",)
    return COMPRESSED_MODALITIES


def image_slots(mm_features, num_q: int,
                modalities: tuple[str, ...] = COMPRESSED_MODALITIES) -> list[ImageSlots]:
    """The draft slots of every image (and, where compressed, video: one span each) of a
    request, in prompt order."""
    out = []
    for feature in sorted(mm_features, key=lambda f: f.mm_position.offset):
        if feature.modality not in modalities:
            continue
        offset, length = feature.mm_position.offset, feature.mm_position.length
        last = offset + length - 2
        kept = tuple(s for s in range(last - (num_q - 2), last + 1) if s >= 0)
        out.append(ImageSlots(feature.identifier, max(offset - 1, 0), last, kept))
    return out


class ImageStateStore:
    """Which row of the draft's image tables (model/image_tables.py) holds each image's
    summary: per request, and by image content (least recently used first) so that a
    request whose image came from the prefix cache, or that resumes after preemption,
    finds it without re-encoding. A row a live request uses is never given to another
    image; row 0 means "no summary"."""

    def __init__(self, capacity: int = 1024) -> None:
        self.per_request: dict[str, dict[str, int]] = {}
        self.by_content: OrderedDict[str, int] = OrderedDict()
        self._free = list(range(capacity, 0, -1))
        self.version = 0  # changes whenever a row is given or taken back

    def row(self, req_id: str, identifier: str) -> int:
        rows = self.per_request.get(req_id, {})
        row = rows.get(identifier, 0)
        if row == 0 and (row := self.by_content.get(identifier, 0)):
            self.per_request.setdefault(req_id, {})[identifier] = row
            self.by_content.move_to_end(identifier)
            self.version += 1
        return row

    def allocate(self, req_id: str, identifier: str) -> int:
        """A row for a new summary of ``identifier``, or 0 when every row is in use by a
        live request."""
        if not self._free and not self._evict():
            return 0
        row = self._free.pop()
        self.per_request.setdefault(req_id, {})[identifier] = row
        self.by_content[identifier] = row
        self.version += 1
        return row

    def _evict(self) -> bool:
        in_use = {row for rows in self.per_request.values() for row in rows.values()}
        for identifier, row in self.by_content.items():
            if row not in in_use:
                del self.by_content[identifier]
                self._free.append(row)
                return True
        return False

    def retain(self, live_req_ids) -> None:
        """Forgets the requests that have ended (their rows stay, by content)."""
        ended = [r for r in self.per_request if r not in live_req_ids]
        for req_id in ended:
            del self.per_request[req_id]
        if ended:
            self.version += 1
