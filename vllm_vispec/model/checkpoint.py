"""Finding, checking and preparing a ViSpec draft checkpoint for vLLM.

A draft comes in the published layout (``JLKang/ViSpec-*``) or NeMo Automodel's
(layout_registry.py recognises which from its tensor names), as one weight file or as
safetensors shards with their index. All checks run in the process that builds the engine
config, so a bad draft fails at start-up with a message that names the problem, before any
worker starts.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from .hf_config import vllm_config_dict
from .layout import WEIGHT_FILES, DraftDims
from .layout_registry import PUBLISHED, RecognisedLayout, recognise
from .weight_files import SHARD_INDEX, SHARD_PATTERN, tensor_shapes, weight_files

AUTOMODEL_EXPORT = Path("model") / "consolidated"  # under an Automodel checkpoint step


def cache_root() -> Path:
    root = os.environ.get("VLLM_VISPEC_CACHE_DIR")
    return Path(root) if root else Path.home() / ".cache" / "vllm_vispec"


def locate_draft(model: str | None) -> Path:
    """A local directory, or a hub repo id that huggingface_hub can fetch."""
    if not model:
        raise ValueError('"method": "vispec" needs "model": the path or hub id of a ViSpec '
                         "draft checkpoint (e.g. JLKang/ViSpec-llava-v1.6-vicuna-7b-hf)")
    path = Path(model).expanduser()
    if path.is_dir():
        # A NeMo Automodel checkpoint step: its Hugging Face export is one level down.
        export = path / AUTOMODEL_EXPORT
        if not (path / "config.json").is_file() and (export / "config.json").is_file():
            return export.resolve()
        return path.resolve()
    if path.exists() or model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise FileNotFoundError(
            f"ViSpec draft checkpoint not found: {model!r} is not a directory (expected a "
            "folder with config.json and model.safetensors, pytorch_model.bin or "
            "safetensors shards; for a NeMo Automodel run, its model/consolidated folder)")
    try:
        from huggingface_hub import snapshot_download
        return Path(snapshot_download(
            model, allow_patterns=["config.json", *WEIGHT_FILES, SHARD_INDEX, SHARD_PATTERN]))
    except Exception as exc:  # offline, unknown repo, no access: one clear message
        raise FileNotFoundError(
            f"ViSpec draft checkpoint not found: {model!r} is neither a local directory "
            f"nor a hub repository that could be downloaded ({type(exc).__name__}: {exc})"
        ) from exc


@dataclass(frozen=True)
class DraftCheckpoint:
    """A draft folder that passed the strict checks."""

    dims: DraftDims
    layout: RecognisedLayout
    files: list[Path]


def inspect_draft(draft_dir: Path) -> DraftCheckpoint:
    """Recognises the draft's layout, reads its dims from its config.json the layout's way
    (``num_q`` from the adaptor's queries) and checks them against its tensors."""
    config_path = draft_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"ViSpec draft checkpoint {draft_dir} has no config.json")
    cfg = json.loads(config_path.read_text())
    files = weight_files(draft_dir)
    where = str(files[0]) if len(files) == 1 else f"{draft_dir} ({len(files)} shards)"
    shapes = tensor_shapes(files)
    layout = recognise(shapes, where)
    return DraftCheckpoint(layout.read_dims(cfg, shapes, where), layout, files)


def read_draft(draft_dir: Path) -> tuple[DraftDims, Path]:
    """Dims and weight file of a draft in the published layout, in one file (what
    training starts from); :func:`load_draft_weights` reads any layout."""
    ckpt = inspect_draft(draft_dir)
    if ckpt.layout.layout is not PUBLISHED or ckpt.layout.prefix or len(ckpt.files) != 1:
        raise ValueError(
            f"ViSpec draft checkpoint {draft_dir} is in the {ckpt.layout.layout.title} "
            f"({len(ckpt.files)} weight file(s)); this reads published single-file drafts")
    return ckpt.dims, ckpt.files[0]


def load_draft_weights(draft_dir: Path) -> tuple[DraftDims, dict]:
    """Dims and every tensor of a draft in any layout, under the published names."""
    import torch
    from safetensors.torch import load_file
    ckpt = inspect_draft(draft_dir)
    state = {}
    for path in ckpt.files:
        part = (load_file(path) if path.suffix == ".safetensors"
                else torch.load(path, map_location="cpu", weights_only=True))
        state.update({ckpt.layout.published_name(k): v for k, v in part.items()})
    return ckpt.dims, state


def check_against_target(dims: DraftDims, source: str, target_name: str,
                         target_hidden: int, target_vocab: int) -> None:
    problems = []
    if dims.hidden_size != target_hidden:
        problems.append(f"hidden size {dims.hidden_size} != target's {target_hidden}")
    if dims.vocab_size != target_vocab:
        problems.append(f"vocabulary size {dims.vocab_size} != target's {target_vocab}")
    if problems:
        raise ValueError(
            f"ViSpec draft {source} does not fit target {target_name}: "
            + "; ".join(problems) + ". A ViSpec draft is trained for one target; see the "
            "README's table of supported targets and their drafts.")


def prepare_draft(model: str | None, target_name: str, target_hidden: int,
                  target_vocab: int, target_max_len: int,
                  drafting: dict | None = None) -> Path:
    """Checks the draft and writes the directory vLLM loads: our config + its weights (the
    draft model renames them onto the published names as they load)."""
    draft_dir = locate_draft(model)
    ckpt = inspect_draft(draft_dir)
    dims = ckpt.dims
    check_against_target(dims, str(draft_dir), target_name, target_hidden, target_vocab)
    # The published drafts cache RoPE only up to their max_position_embeddings; serve
    # the target's whole context.
    dims = replace(dims, max_position_embeddings=max(dims.max_position_embeddings,
                                                     target_max_len))
    config = vllm_config_dict(dims, source=str(draft_dir), drafting=drafting)
    linked = list(ckpt.files)
    if (draft_dir / SHARD_INDEX).is_file():
        linked.append(draft_dir / SHARD_INDEX)  # vLLM loads only the shards it names
    stats = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in linked]
    key = hashlib.sha256(json.dumps([stats, config], sort_keys=True).encode()
                         ).hexdigest()[:16]
    out = cache_root() / "prepared" / key
    if (out / "config.json").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".tmp-"))
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    for path in linked:
        os.symlink(path, tmp / path.name)
    try:
        os.rename(tmp, out)
    except OSError:  # another process prepared the same draft first
        shutil.rmtree(tmp, ignore_errors=True)
    return out
