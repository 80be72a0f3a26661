"""Patches: the front end references a cached picture by hash only once its data is on its
way to the engine.

vLLM's IPC multimodal cache keeps a metadata-only shadow in the front end (P0) of the
engine's item cache (P1). P0 updates its shadow while it processes a request's pictures;
P1 updates its cache when the request arrives. When two requests carry the same picture
and are in flight together, the one processed second finds the shadow entry and is sent
with ``data=None``; if it reaches the engine first (the first request still between
processing and sending, or never sent because its client went away), P1 has no data for
it: vLLM returns a "Multi-modal cache miss ... P0/P1 cache drift" error for that request,
an HTTP 500 (vllm-project/vllm#46747 makes the miss recoverable by a client retry; it does
not avoid it).

The fix keeps vLLM's caches and adds one rule to the shadow: an entry counts as cached
only after a request carrying its data has been handed to the engine's input socket
(which delivers in order). Until then a request with the same picture processes it again
and sends the data, which P1 stores in place of anything it had.
"""

from __future__ import annotations

import weakref

from .registry import Patch

_CACHES: weakref.WeakSet = weakref.WeakSet()  # delivery-ordered shadows of this process


def delivery_ordered_cache_class():
    """A subclass of vLLM's LRU sender cache with the delivery rule (built lazily: vLLM's
    multimodal cache module is imported only when needed)."""
    global _CLASS
    if _CLASS is not None:
        return _CLASS
    from vllm.multimodal.cache import LruKeyReplicatedSenderCache

    class DeliveryOrderedSenderCache(LruKeyReplicatedSenderCache):
        """P0's shadow that trusts an entry only once its data was sent to P1."""

        def __init__(self, model_config) -> None:
            super().__init__(model_config)
            # Hashes whose data has not yet gone to the engine in any request.
            self.unsent: set[str] = set()

        def is_cached_item(self, mm_hash: str) -> bool:
            return mm_hash not in self.unsent and super().is_cached_item(mm_hash)

        def get_and_update_item(self, mm_item, mm_hash: str):
            if mm_item is None:
                return super().get_and_update_item(mm_item, mm_hash)
            # The item was processed (a miss here): send its data, even when the shadow
            # holds an entry that was never delivered.
            self._cache.pop(mm_hash, None)
            self.unsent.add(mm_hash)
            return super().get_and_update_item(mm_item, mm_hash)

        def invalidate(self, mm_hash: str) -> None:
            super().invalidate(mm_hash)
            self.unsent.discard(mm_hash)

        def clear_cache(self) -> None:
            super().clear_cache()
            self.unsent.clear()

        def mark_sent(self, request) -> None:
            """``request`` (an EngineCoreRequest) was queued for the engine: the items
            whose data it carries are now safe to reference by hash."""
            for feature in request.mm_features or ():
                if feature.data is not None:
                    self.unsent.discard(feature.mm_hash or feature.identifier)

    _CLASS = DeliveryOrderedSenderCache
    return _CLASS


_CLASS = None


def _wrap_processor_cache_from_config(original):
    def processor_cache_from_config(vllm_config):
        from vllm.multimodal.cache import LruKeyReplicatedSenderCache

        from .engine_scope import uses_vispec_draft
        cache = original(vllm_config)
        if type(cache) is LruKeyReplicatedSenderCache and uses_vispec_draft(vllm_config):
            cache = delivery_ordered_cache_class()(vllm_config.model_config)
            _CACHES.add(cache)
        return cache
    return processor_cache_from_config


def _mark_sent(request) -> None:
    for cache in list(_CACHES):
        cache.mark_sent(request)


def _wrap_send_input(original):
    def _send_input(self, request_type, request, *args, **kwargs):
        # The socket queues the message before this returns: later requests are behind it.
        sent = original(self, request_type, request, *args, **kwargs)
        if _CACHES and getattr(request, "mm_features", None):
            from vllm.v1.engine import EngineCoreRequestType
            if request_type == EngineCoreRequestType.ADD:
                _mark_sent(request)
        return sent
    return _send_input


def _wrap_inproc_add_request(original):
    def add_request(self, request):
        original(self, request)  # the engine took it (its cache holds every item now)
        if _CACHES and request.mm_features:
            _mark_sent(request)
    return add_request


UPSTREAM = ("vllm-project/vllm#46747 (makes the P0/P1 drift recoverable by a client retry, "
            "does not prevent it)")
REMOVE_WHEN = "vLLM's front end orders its multimodal shadow cache by delivery to the engine."
PATCHES = (
    Patch(
        name="mm_cache_delivery_order",
        target="vllm.renderers.base:processor_cache_from_config",
        what="For vispec engines, the front end's IPC multimodal sender cache is a subclass "
             "that treats an entry as cached only once a request carrying its data was "
             "queued for the engine.",
        why="Two in-flight requests with the same picture: the second, sent with data=None, "
            "could reach the engine before the first and fail with 'P0/P1 cache drift' "
            "(HTTP 500); also after a request whose picture was processed but never sent.",
        remove_when=REMOVE_WHEN,
        upstream=UPSTREAM,
        make_wrapper=_wrap_processor_cache_from_config,
    ),
    Patch(
        name="mm_cache_mark_sent_async",
        target="vllm.v1.engine.core_client:AsyncMPClient._send_input",
        what="After a new request is queued for the engine (vllm serve, AsyncLLM), tells "
             "the delivery-ordered sender caches of this process which items' data it "
             "carried. A no-op in processes without such a cache.",
        why="The queueing is the point after which the engine is sure to see the data "
            "before any later request that references it by hash.",
        remove_when=REMOVE_WHEN,
        upstream=UPSTREAM,
        make_wrapper=_wrap_send_input,
    ),
    Patch(
        name="mm_cache_mark_sent_sync",
        target="vllm.v1.engine.core_client:SyncMPClient._send_input",
        what="The same for the offline engine with its engine core in another process.",
        why="LLMEngine callers can render and add requests in different orders.",
        remove_when=REMOVE_WHEN,
        upstream=UPSTREAM,
        make_wrapper=_wrap_send_input,
    ),
    Patch(
        name="mm_cache_mark_sent_inproc",
        target="vllm.v1.engine.core_client:InprocClient.add_request",
        what="The same for the engine core running in the caller's process.",
        why="LLMEngine callers can render and add requests in different orders.",
        remove_when=REMOVE_WHEN,
        upstream=UPSTREAM,
        make_wrapper=_wrap_inproc_add_request,
    ),
)
