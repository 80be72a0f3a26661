"""Where images sit in the draft sequence, and the per-request image state store."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from vllm_vispec.image_state import ImageStateStore, ImageSummary, image_slots, kept_intervals


def feature(offset, length, identifier="img", modality="image"):
    return SimpleNamespace(modality=modality, identifier=identifier,
                           mm_position=SimpleNamespace(offset=offset, length=length))


def test_image_slots_follow_the_eagle_shift():
    # Image tokens 5..20: draft slots 4..19 (slot j carries token j + 1). With num_q = 2
    # the last slot keeps the one compressed token and the other 15 slots are dropped.
    (img,) = image_slots([feature(5, 16)], num_q=2)
    assert (img.first, img.last, img.kept) == (4, 19, (19,))
    assert list(img.dropped) == list(range(4, 19))


def test_more_queries_keep_more_slots_and_images_are_sorted():
    first, second = image_slots([feature(30, 6, "b"), feature(2, 4, "a")], num_q=4)
    assert (first.identifier, second.identifier) == ("a", "b")
    assert first.kept == (2, 3, 4) and list(first.dropped) == [1]
    assert second.kept == (32, 33, 34) and list(second.dropped) == [29, 30, 31]


def test_image_at_the_start_clamps_its_first_slot():
    (img,) = image_slots([feature(0, 3)], num_q=2)
    assert (img.first, img.kept, list(img.dropped)) == (0, (1,), [0])


def test_videos_are_not_compressed():
    assert image_slots([feature(3, 8, modality="video")], num_q=2) == []


def test_kept_intervals_skip_dropped_slots_only():
    images = image_slots([feature(2, 4, "a"), feature(9, 3, "b")], num_q=2)
    # a: slots 1..4, keeps 4; b: slots 8..10, keeps 10.
    assert kept_intervals(images, 14) == [(0, 1), (4, 8), (10, 14)]
    assert kept_intervals(images, 3) == [(0, 1)]
    assert kept_intervals([], 5) == [(0, 5)]


def test_store_finds_summaries_by_content_and_frees_ended_requests():
    store = ImageStateStore(max_images_by_content=2)
    s = ImageSummary(torch.zeros(1, 4), torch.ones(4))
    store.put("r1", "img-a", s)
    assert store.get("r2", "img-a") is s  # same picture in another request (prefix cache)
    store.retain({"r2"})
    assert "r1" not in store.per_request and store.get("r2", "img-a") is s
    store.put("r3", "img-b", s)
    store.put("r3", "img-c", s)
    assert list(store.by_content) == ["img-b", "img-c"]  # LRU bound
    assert store.get("r4", "img-a") is None
