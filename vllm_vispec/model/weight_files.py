"""A draft folder's weight files (one file, or safetensors shards with or without their
index) and the names and shapes of its tensors, read without their data."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from .layout import WEIGHT_FILES

SHARD_INDEX = "model.safetensors.index.json"
SHARD_PATTERN = "model-*-of-*.safetensors"  # Automodel's (and HF's) shard names


def weight_files(draft_dir: Path) -> list[Path]:
    """The checkpoint's weight files: the shards its index names, or its one file."""
    index = draft_dir / SHARD_INDEX
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [n for n in names if not (draft_dir / n).is_file()]
        if missing:
            raise FileNotFoundError(
                f"ViSpec draft checkpoint {draft_dir}: {SHARD_INDEX} names weight files that "
                f"are not there: {missing}")
        return [draft_dir / n for n in names]
    for name in WEIGHT_FILES:
        if (draft_dir / name).is_file():
            return [draft_dir / name]
    shards = sorted(draft_dir.glob(SHARD_PATTERN))
    if shards:
        return shards
    raise FileNotFoundError(
        f"ViSpec draft checkpoint {draft_dir} has no weights: expected one of {WEIGHT_FILES}, "
        f"or safetensors shards ({SHARD_PATTERN}) with or without {SHARD_INDEX}")


def safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes from a safetensors file's header alone (8-byte length, JSON)."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    return {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}


def tensor_shapes(paths: list[Path]) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the checkpoint's tensors, without reading their data."""
    shapes: dict[str, tuple[int, ...]] = {}
    for path in paths:
        if path.suffix == ".safetensors":
            found = safetensors_shapes(path)
        else:
            import torch
            state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
            found = {k: tuple(v.shape) for k, v in state.items()}
        twice = sorted(set(found) & set(shapes))
        if twice:
            raise ValueError(f"ViSpec draft checkpoint {path.parent}: tensors stored in more "
                             f"than one weight file: {twice[:6]}")
        shapes.update(found)
    return shapes
