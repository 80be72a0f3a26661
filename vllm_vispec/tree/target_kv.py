"""Where the target's KV cache lives, for tree verification (which moves each accepted
path's K/V into place): the target's KV cache group and its attention layers' caches."""

from __future__ import annotations

import torch


class TargetKVCaches:
    """Fixed once the runner has allocated the caches, so found once."""

    def __init__(self, draft_layer_names) -> None:
        self._draft_layers = set(draft_layer_names)
        self._group: int | None = None
        self._caches: list[tuple[torch.Tensor, str]] | None = None

    def group(self, runner) -> int:
        """The KV cache group of the target's layers."""
        if self._group is None:
            self._group = next(
                (gid for gid, group in enumerate(runner.kv_cache_config.kv_cache_groups)
                 if any(name not in self._draft_layers for name in group.layer_names)),
                None)
            if self._group is None:
                raise RuntimeError("vispec: no KV cache group holds the target's layers")
        return self._group

    def caches(self, runner) -> list[tuple[torch.Tensor, str]]:
        """(cache, CPU attention ISA) of every target attention layer, each cache once."""
        if self._caches is None:
            out, seen = [], set()
            context = runner.compilation_config.static_forward_context
            for group in runner.kv_cache_config.kv_cache_groups:
                for name in group.layer_names:
                    layer = context.get(name)
                    if name in self._draft_layers or layer is None:
                        continue
                    kv = layer.kv_cache
                    if isinstance(kv, torch.Tensor) and kv.data_ptr() not in seen:
                        seen.add(kv.data_ptr())
                        out.append((kv, layer.isa))
            self._caches = out
        return self._caches
