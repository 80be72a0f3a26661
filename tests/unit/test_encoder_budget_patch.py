"""The encoder look-ahead patch (patches/encoder_budget.py) on a small model of vLLM's
scheduler: a request with two 16-token pictures, an encoder cache that holds one. The
fake ``_try_schedule_encoder_inputs`` follows vLLM 0.32's rules for this case (window
``[computed, computed + new + shift)``, a picture that has no room stops the chunk before
it); the wrapper is built from the registry's patch around it."""

from __future__ import annotations

from types import SimpleNamespace

from vllm_vispec.model.hf_config import DRAFT_ARCHITECTURE
from vllm_vispec.patches import PATCHES

PATCH = next(p for p in PATCHES if p.name == "encoder_lookahead_progress")
PICTURE = 16


def picture(offset: int):
    return SimpleNamespace(mm_position=SimpleNamespace(offset=offset, length=PICTURE))


class FakeScheduler:
    """Two pictures of one request and a cache with room for one of them."""

    def __init__(self, vispec: bool, offsets: tuple[int, int]):
        archs = [DRAFT_ARCHITECTURE] if vispec else ["EagleLlamaForCausalLM"]
        self.vllm_config = SimpleNamespace(speculative_config=SimpleNamespace(
            draft_model_config=SimpleNamespace(hf_config=SimpleNamespace(architectures=archs))))
        self.cached = {0}  # picture 0 is in the cache, picture 1 has no room
        self.freed: list[int] = []
        self.calls: list[int] = []
        self.encoder_cache_manager = SimpleNamespace(
            get_cached_input_ids=lambda request: set(self.cached))
        self.request = SimpleNamespace(mm_features=[picture(o) for o in offsets],
                                       num_output_placeholders=0)

    def _free_encoder_input(self, request, input_id):
        self.cached.discard(input_id)
        self.freed.append(input_id)

    def original(self, request, computed, new, budget, shift=0):
        self.calls.append(shift)
        for input_id, feature in enumerate(request.mm_features):
            start = feature.mm_position.offset
            end = start + PICTURE
            if not (start < computed + new + shift and end > computed):
                continue  # outside the window
            if input_id in self.cached or not self.cached:
                continue  # cached, or room for it
            return [], (start - (computed + shift) if computed + shift < start else 0), budget
        return [0], new, budget

    def schedule(self, computed: int, new: int = 16, shift: int = 1):
        self.request.num_computed_tokens = computed
        wrapper = PATCH.make_wrapper(FakeScheduler.original)
        return wrapper(self, self.request, computed, new, 99, shift)[1]


def test_one_token_apart_schedules_up_to_the_next_picture_in_vispec_engines():
    # Picture 0 at [6, 22), picture 1 at [23, 39): at 22 the look-ahead reaches 23.
    sched = FakeScheduler(vispec=True, offsets=(6, 23))
    assert sched.schedule(22) == 1  # vLLM alone: 23 - (22 + 1) = 0, for ever
    assert sched.calls == [1, 0] and sched.freed == []


def test_back_to_back_pictures_release_the_computed_one_in_vispec_engines():
    # Picture 1 starts where picture 0 ends: at 22 its predecessor is all computed.
    sched = FakeScheduler(vispec=True, offsets=(6, 22))
    assert sched.schedule(22) == 16
    assert sched.freed == [0] and sched.calls == [1, 0, 1]


def test_a_picture_still_being_computed_is_kept():
    # Picture 0's last token (21) is not computed yet: it stays cached; the chunk takes
    # that token, the look-ahead slot falling on picture 1's first token.
    sched = FakeScheduler(vispec=True, offsets=(6, 22))
    assert sched.schedule(21) == 1
    assert sched.freed == [] and sched.cached == {0}


def test_other_engines_get_vllms_answer_unchanged():
    for offsets in ((6, 23), (6, 22)):
        sched = FakeScheduler(vispec=False, offsets=offsets)
        assert sched.schedule(22) == 0
        assert sched.calls == [1] and sched.freed == []


def test_a_request_that_progresses_is_left_alone():
    sched = FakeScheduler(vispec=True, offsets=(6, 40))
    assert sched.schedule(0) == 16
    assert sched.calls == [1]
