"""The front end's and the engine's multimodal caches must not drift apart.

Two requests with the same picture are processed by the front end in one order and reach
the engine in the other: the first processed carries the picture's data, the second is
sent by hash only. vLLM 0.32 alone fails the second ("Multi-modal cache miss ... P0/P1
cache drift"), which `vllm serve` answers with HTTP 500; with vispec's
mm_cache_delivery_order patch the second request carries the data too and both answers
equal vLLM's without speculation. Also: a request whose picture was processed but never
sent (its client went away) must not poison later requests with the same picture.
"""

from __future__ import annotations

import pytest
from prompts import conversations
from vllm_runs import greedy_params, offline_llm, vispec_config


def _run(llm) -> dict[str, list[int]]:
    """Steps the engine until its requests finish: token ids by request id (vLLM's
    offline loop wants numeric ids)."""
    from vllm import RequestOutput
    outs = llm._run_engine(RequestOutput, use_tqdm=False)
    return {o.request_id: list(o.outputs[0].token_ids) for o in outs}


def _sent_by_hash_only(engine_input) -> bool:
    items = engine_input["mm_kwargs"]["image"]
    return all(item is None for item in items)


@pytest.mark.parametrize("conv", ["one_image", "two_images"])
def test_same_picture_sent_out_of_processing_order(conv, baseline):
    messages = conversations()[conv]
    with offline_llm("llava", vispec_config("llava", 3)) as llm:
        first = llm._preprocess_chat_one(messages)  # processes the pictures
        second = llm._preprocess_chat_one(messages)  # finds them in the shadow cache
        # Without the patch the second goes out by hash only (what makes the engine miss).
        assert not _sent_by_hash_only(second)
        engine = llm.llm_engine
        engine.add_request("1", second, greedy_params())
        engine.add_request("0", first, greedy_params())
        got = _run(llm)
        # Sent in order, a third request may now reference the pictures by hash.
        third = llm._preprocess_chat_one(messages)
        assert _sent_by_hash_only(third)
        engine.add_request("2", third, greedy_params())
        got.update(_run(llm))
    want = baseline("llava")[conv][0]
    assert got == {"0": want, "1": want, "2": want}  # first, second, third


def test_picture_processed_but_never_sent(baseline):
    messages = conversations()["one_image"]
    with offline_llm("llava", vispec_config("llava", 3)) as llm:
        llm._preprocess_chat_one(messages)  # rendered, then dropped (client went away)
        later = llm._preprocess_chat_one(messages)
        assert not _sent_by_hash_only(later)
        llm.llm_engine.add_request("0", later, greedy_params())
        got = _run(llm)
    assert got == {"0": baseline("llava")["one_image"][0]}


def test_vllm_alone_drifts(monkeypatch):
    """The same order with vLLM's own sender cache fails: the patch is still needed (when
    this test fails, vLLM orders its cache by delivery and the patch can go)."""
    import vllm.renderers.base as renderers
    from vllm.multimodal.cache import MultiModalCacheMissError, factories

    from vllm_vispec.plugin import register
    register()  # patches applied once, now: the engine below does not re-apply them
    monkeypatch.setattr(renderers, "processor_cache_from_config",
                        factories.processor_cache_from_config)
    messages = conversations()["one_image"]
    with offline_llm("llava", vispec_config("llava", 3)) as llm:
        first = llm._preprocess_chat_one(messages)
        second = llm._preprocess_chat_one(messages)
        assert _sent_by_hash_only(second)
        with pytest.raises(MultiModalCacheMissError, match="P0/P1 cache drift"):
            llm.llm_engine.add_request("1", second, greedy_params())
        # The front end registered the refused request before the engine refused it.
        llm.llm_engine.abort_request(["1"])
        llm.llm_engine.add_request("0", first, greedy_params())
        assert set(_run(llm)) == {"0"}
