"""The checkpoint layouts a ViSpec draft may come in, recognised by its tensor names.

Each layout names the image adaptor its own way (the one part no EAGLE draft has), maps its
keys onto the published names the draft model loads by, and reads its own config.json
fields into :class:`DraftDims`. A checkpoint with adaptor keys of two layouts is refused,
and so is one of a layout whose keys or shapes are not exactly what its config implies
(the check names a few keys of each kind, then a count). An outer ``model.`` prefix on
every key is accepted for any layout.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from . import automodel_layout
from .layout import DraftDims, check_named_shapes, dims_from_config, dims_summary, \
    expected_shapes, some_keys

OUTER_PREFIX = "model."


@dataclass(frozen=True)
class CheckpointLayout:
    name: str
    title: str  # as error messages name it
    adaptor_prefix: str  # the keys that identify the layout
    query_key: str  # the adaptor's learned queries [num_q, heads, hidden / heads]
    to_published: Callable[[str], str]
    from_published: Callable[[str], str]
    read_dims: Callable[[dict[str, Any], int], DraftDims]  # (config.json, num_q)


def _same(name: str) -> str:
    return name


PUBLISHED = CheckpointLayout(
    name="published", title="published layout", adaptor_prefix="imadpt.",
    query_key="imadpt.q", to_published=_same, from_published=_same,
    read_dims=dims_from_config)
AUTOMODEL = CheckpointLayout(
    name="automodel", title="NeMo Automodel layout",
    adaptor_prefix=automodel_layout.ADAPTOR, query_key=automodel_layout.QUERY,
    to_published=automodel_layout.to_published_name,
    from_published=automodel_layout.from_published_name,
    read_dims=automodel_layout.dims_from_automodel_config)
LAYOUTS = (PUBLISHED, AUTOMODEL)


@dataclass(frozen=True)
class RecognisedLayout:
    """A layout as one checkpoint has it (with or without the outer prefix)."""

    layout: CheckpointLayout
    prefix: str = ""

    def published_name(self, key: str) -> str:
        return self.layout.to_published(key[len(self.prefix):])

    def checkpoint_name(self, published_key: str) -> str:
        return self.prefix + self.layout.from_published(published_key)

    def expected_shapes(self, dims: DraftDims) -> dict[str, tuple[int, ...]]:
        return {self.checkpoint_name(k): s for k, s in expected_shapes(dims).items()}

    def num_q(self, found: dict[str, tuple[int, ...]], where: str) -> int:
        key = self.prefix + self.layout.query_key
        shape = found.get(key)
        if shape is None or len(shape) != 3:
            raise ValueError(
                f"ViSpec draft checkpoint {where} ({self.layout.title}) has no image adaptor "
                f"queries {key!r} [num_q, heads, head_dim] (found {shape}; an EAGLE draft "
                "rather than a ViSpec one has no image adaptor at all)")
        return int(shape[0])

    def read_dims(self, cfg: dict[str, Any], found: dict[str, tuple[int, ...]],
                  where: str) -> DraftDims:
        """The dims the config implies, checked strictly against the checkpoint's tensors."""
        dims = self.layout.read_dims(cfg, self.num_q(found, where))
        self.check(found, dims, where)
        return dims

    def check(self, found: dict[str, tuple[int, ...]], dims: DraftDims, where: str) -> None:
        check_named_shapes(found, self.expected_shapes(dims), where,
                           self.layout.title + (f" ('{self.prefix}' prefix)" if self.prefix
                                                else ""),
                           dims_summary(dims))


def recognise(names: Iterable[str], where: str) -> RecognisedLayout:
    names = list(names)
    prefix = OUTER_PREFIX if names and all(n.startswith(OUTER_PREFIX) for n in names) else ""
    bare = [n[len(prefix):] for n in names]
    hits = {layout: sorted(n for n in bare if n.startswith(layout.adaptor_prefix))
            for layout in LAYOUTS}
    found = [layout for layout in LAYOUTS if hits[layout]]
    if len(found) > 1:
        raise ValueError(
            f"ViSpec draft checkpoint {where} is ambiguous: it has image adaptor keys of "
            + " and of ".join(f"the {layout.title} ({some_keys(hits[layout], 3)})"
                              for layout in found)
            + "; a draft has one adaptor, named one way")
    if not found:
        raise ValueError(
            f"ViSpec draft checkpoint {where} has no image adaptor: neither "
            + " nor ".join(f"{layout.query_key!r} ({layout.title})" for layout in LAYOUTS)
            + ": is this an EAGLE draft rather than a ViSpec one?")
    return RecognisedLayout(found[0], prefix)
