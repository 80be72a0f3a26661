"""Where images sit in the draft sequence, and the per-request image state store."""

from __future__ import annotations

from types import SimpleNamespace

from vllm_vispec.image_state import ImageStateStore, image_slots


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


def test_a_video_is_one_span_like_an_image():
    # Every frame's tokens are one span, as upstream: the same slots an image of that
    # length gets, one summary (by the video's hash).
    (video,) = image_slots([feature(3, 32, "vid", modality="video")], num_q=3)
    (image,) = image_slots([feature(3, 32, "vid")], num_q=3)
    assert video == image
    assert (video.identifier, video.first, video.last, video.kept) == ("vid", 2, 33, (32, 33))


def test_images_and_videos_are_spans_in_prompt_order_and_audio_is_text():
    slots = image_slots([feature(40, 8, "v", modality="video"), feature(2, 4, "i"),
                         feature(20, 5, "a", modality="audio")], num_q=2)
    assert [(s.identifier, s.first, s.last) for s in slots] == [("i", 1, 4), ("v", 39, 46)]


def test_store_finds_rows_by_content_and_frees_ended_requests():
    store = ImageStateStore(capacity=2)
    row_a = store.allocate("r1", "img-a")
    assert row_a > 0 and store.row("r1", "img-a") == row_a
    assert store.row("r2", "img-a") == row_a  # same picture in another request (prefix cache)
    store.retain({"r2"})
    assert "r1" not in store.per_request and store.row("r2", "img-a") == row_a
    row_b = store.allocate("r3", "img-b")
    assert row_b not in (0, row_a)
    # Full, and every row in use by a live request: nothing to give.
    assert store.allocate("r3", "img-c") == 0
    store.retain({"r3"})  # img-a is no longer in use: its row is reused
    assert store.allocate("r3", "img-c") == row_a
    assert store.row("r4", "img-a") == 0 and list(store.by_content) == ["img-b", "img-c"]


def test_store_version_changes_with_rows():
    store = ImageStateStore(capacity=4)
    v0 = store.version
    store.allocate("r1", "a")
    v1 = store.version
    assert v1 != v0
    store.row("r1", "a")
    assert store.version == v1  # a lookup that finds the request's own row changes nothing
    store.row("r2", "a")
    assert store.version != v1  # adopted by another request
