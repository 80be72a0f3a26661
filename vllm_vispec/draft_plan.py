"""Host-side planning of a draft step's image state, as plain arrays.

Everything here is pure and runs on the host from what the runner already keeps there
(each request's image placements, the scheduled query lengths, an upper bound of each
sequence length): no tensor on the device is read, so the draft passes that use the
result never wait for the device. The device-side half (draft_metadata.py) turns these
arrays into per-token rows with a handful of batched tensor ops.

Per request, images are padded to the batch's largest count ``M``:

- ``dropped_start``/``dropped_stop`` [R, M]: the image's dropped slots ``[start, stop)``;
  padding images are empty ranges at ``far`` (beyond every position);
- ``last`` [R, M]: the image's last slot (``far`` for padding): a slot ``p`` uses the
  global vector of the latest image with ``last < p``;
- ``global_row`` [R, M + 1]: row 0 is the zero vector (before any image), row ``i + 1``
  the table row of image ``i``'s global vector (0 where it has no summary);
- ``slot_pos``/``slot_row`` [R, S]: each compressed slot and the table row of the
  compressed token that replaces its input (-1 / 0 for padding).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .image_state import ImageSlots


@dataclass(frozen=True)
class ImagePlan:
    dropped_start: np.ndarray  # [R, M] int64
    dropped_stop: np.ndarray  # [R, M] int64
    last: np.ndarray  # [R, M] int64
    global_row: np.ndarray  # [R, M + 1] int64
    slot_pos: np.ndarray  # [R, S] int64
    slot_row: np.ndarray  # [R, S] int64

    @property
    def num_images(self) -> int:
        return self.last.shape[1]


def compressed_row(summary_row: int, index: int, num_compressed: int) -> int:
    """Row of an image's ``index``-th compressed token in the compressed-token table
    (row 0 there is "no replacement"); ``summary_row`` 0 means no summary."""
    return 0 if summary_row == 0 else 1 + (summary_row - 1) * num_compressed + index


def plan_images(images: list[list[ImageSlots]], rows: list[list[int]], num_compressed: int,
                far: int) -> ImagePlan:
    """The batch's image arrays; ``rows[r][i]`` is the summary row of request ``r``'s
    image ``i`` (0: none yet)."""
    num_reqs = len(images)
    m = max([len(req) for req in images] + [1])
    s = m * max(num_compressed, 1)
    start = np.full((num_reqs, m), far, dtype=np.int64)
    stop = np.full((num_reqs, m), far, dtype=np.int64)
    last = np.full((num_reqs, m), far, dtype=np.int64)
    global_row = np.zeros((num_reqs, m + 1), dtype=np.int64)
    slot_pos = np.full((num_reqs, s), -1, dtype=np.int64)
    slot_row = np.zeros((num_reqs, s), dtype=np.int64)
    for r, (req_images, req_rows) in enumerate(zip(images, rows)):
        col = 0
        for i, (image, row) in enumerate(zip(req_images, req_rows)):
            dropped = image.dropped
            start[r, i], stop[r, i], last[r, i] = dropped.start, dropped.stop, image.last
            global_row[r, i + 1] = row
            for j, slot in enumerate(image.kept):
                slot_pos[r, col], slot_row[r, col] = slot, compressed_row(row, j,
                                                                         num_compressed)
                col += 1
    return ImagePlan(start, stop, last, global_row, slot_pos, slot_row)


def kept_counts(plan: ImagePlan, bounds: np.ndarray) -> np.ndarray:
    """Number of kept positions below ``bounds[r]`` for each request."""
    start = np.minimum(plan.dropped_start, bounds[:, None])
    stop = np.minimum(plan.dropped_stop, bounds[:, None])
    return bounds - (stop - start).sum(axis=1)


def images_to_summarize(images: list[ImageSlots], query_start: int,
                        query_end: int) -> list[int]:
    """Indices of the images whose summary this pass needs first: those whose last
    compressed slot is among the pass's query positions ``[query_start, query_end)``."""
    return [i for i, image in enumerate(images)
            if image.kept and query_start <= image.kept[-1] < query_end]


def images_in_use(images: list[ImageSlots], query_end: int) -> list[int]:
    """Indices of the images whose summary some query below ``query_end`` reads (its
    global vector from the slot after the image on)."""
    return [i for i, image in enumerate(images) if image.last + 1 < query_end]
