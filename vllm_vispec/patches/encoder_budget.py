"""Patch: in a vispec engine, the drafter's one-token look-ahead never stops a prompt's
prefill when its next picture has no room in the encoder cache yet.

vLLM 0.32's scheduler serves EAGLE-style drafters (vispec runs as one) a margin of one
token (``num_prefill_lookahead_tokens``) on both ends of a picture's encoder-cache life:

- ``_try_schedule_encoder_inputs`` looks for pictures in ``[computed, computed + new + 1)``
  (``shift_computed_tokens``); a picture it finds there that cannot be cached stops the
  chunk at ``start - (computed + 1)`` tokens;
- ``_free_encoder_inputs`` keeps a picture cached until ``computed >= end + 1``.

The encoder cache holds ``max(max_num_batched_tokens, largest picture)`` embeddings. When
it cannot hold a prompt's two consecutive pictures at once (a small token budget), a
request whose computed tokens reach the end of picture ``i`` while picture ``i + 1``
starts one token later (LLaVA's ``<image>\\n``) is scheduled ``0`` tokens for ever: it
still holds ``i`` (freed only one token further on) and needs room for ``i + 1`` before it
may take that token. Every later step schedules nothing for it, and its picture keeps
other requests' pictures out of the cache too: the engine steps without end.

The fix keeps vLLM's accounting and only removes the look-ahead where it would leave a
request with no progress:

1. schedule up to the next picture's first token (the look-ahead window without its
   extra token): vLLM's runner already gives the drafter the token embedding for a
   look-ahead slot whose picture is not encoded yet (``_gather_mm_embeddings``), and for
   ViSpec that slot is a dropped image slot (``image_state``), never attended to;
2. when the next picture starts right where the last one ended (no separator token),
   release the request's own pictures whose tokens are all computed: neither the target
   nor the drafter reads them again (the drafter reads from ``computed + 1`` on).

Engines without a vispec draft run vLLM's code unchanged.
"""

from __future__ import annotations

from .engine_scope import uses_vispec_draft
from .registry import Patch


def _fully_computed_inputs(scheduler, request, num_computed_tokens: int) -> list[int]:
    """The request's cached pictures whose placeholder tokens are all computed."""
    done = min(num_computed_tokens,
               request.num_computed_tokens - request.num_output_placeholders)
    out = []
    for input_id in sorted(scheduler.encoder_cache_manager.get_cached_input_ids(request)):
        position = request.mm_features[input_id].mm_position
        if position.offset + position.length <= done:
            out.append(input_id)
    return out


def _make_wrapper(original):
    def _try_schedule_encoder_inputs(self, request, num_computed_tokens, num_new_tokens,
                                     encoder_compute_budget, shift_computed_tokens=0):
        result = original(self, request, num_computed_tokens, num_new_tokens,
                          encoder_compute_budget, shift_computed_tokens)
        stuck = result[1] == 0 and num_new_tokens > 0 and shift_computed_tokens > 0
        if not stuck or not uses_vispec_draft(self.vllm_config):
            return result
        # 1. Up to the next picture, the look-ahead slot falling on its first token.
        result = original(self, request, num_computed_tokens, num_new_tokens,
                          encoder_compute_budget, 0)
        if result[1] > 0:
            return result
        # 2. The next picture starts right here: its predecessor is no longer read.
        released = _fully_computed_inputs(self, request, num_computed_tokens)
        if not released:
            return result
        for input_id in released:
            self._free_encoder_input(request, input_id)
        return original(self, request, num_computed_tokens, num_new_tokens,
                        encoder_compute_budget, shift_computed_tokens)
    return _try_schedule_encoder_inputs


PATCH = Patch(
    name="encoder_lookahead_progress",
    target="vllm.v1.core.sched.scheduler:Scheduler._try_schedule_encoder_inputs",
    what="In a vispec engine, when the drafter's one-token look-ahead would schedule a "
         "request 0 tokens (its next picture has no encoder-cache room while it still "
         "holds the previous one), schedule it up to the next picture's first token, or, "
         "when that picture starts right there, release its fully computed pictures first.",
    why="vLLM 0.32 frees a picture only one token past its end and reserves the next one "
        "a token early; with an encoder cache smaller than two pictures "
        "(max_num_batched_tokens below two pictures' tokens) a prompt's second picture "
        "waits for ever: the engine never finishes (eagle too).",
    remove_when="vLLM's scheduler lets a request with the drafter look-ahead progress up "
                "to a picture it cannot cache yet.",
    make_wrapper=_make_wrapper,
    upstream="none filed in vLLM (the margin is from vllm-project/vllm#46315; the same "
             "zero-progress loop: vllm-project/vllm-ascend#17195)",
)
