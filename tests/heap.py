"""The test processes' garbage-collector setting, kept apart so every test process can
import it (the kernel tests' too, which import nothing of vLLM)."""

from __future__ import annotations

import gc


def freeze_heap() -> None:
    """Keeps the objects alive now out of the garbage collector's full passes.

    vLLM collects the whole heap about a dozen times while it builds an engine (after each
    model load, before freezing the heap) and unfreezes it when an engine shuts down; with
    torch, transformers and vLLM loaded that is about 0.4 s a pass. Collected once and
    frozen, those passes see only the objects made since. Garbage is collected before the
    freeze, so nothing is kept that would have been freed."""
    if gc.get_freeze_count() == 0:
        gc.collect()
        gc.freeze()
