"""Finding, checking and preparing a published ViSpec draft checkpoint for vLLM.

All checks run in the process that builds the engine config, so a bad draft fails at
start-up with a message that names the problem, before any worker starts.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from .hf_config import vllm_config_dict
from .layout import WEIGHT_FILES, DraftDims, check_shapes, dims_from_config


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
        return path.resolve()
    if path.exists() or model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise FileNotFoundError(
            f"ViSpec draft checkpoint not found: {model!r} is not a directory (expected a "
            "folder with config.json and model.safetensors or pytorch_model.bin)")
    try:
        from huggingface_hub import snapshot_download
        return Path(snapshot_download(
            model, allow_patterns=["config.json", *WEIGHT_FILES]))
    except Exception as exc:  # offline, unknown repo, no access: one clear message
        raise FileNotFoundError(
            f"ViSpec draft checkpoint not found: {model!r} is neither a local directory "
            f"nor a hub repository that could be downloaded ({type(exc).__name__}: {exc})"
        ) from exc


def weight_file(draft_dir: Path) -> Path:
    for name in WEIGHT_FILES:
        if (draft_dir / name).is_file():
            return draft_dir / name
    raise FileNotFoundError(
        f"ViSpec draft checkpoint {draft_dir} has no weights: expected one of {WEIGHT_FILES}")


def tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes of a weight file's tensors, without reading their data."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    import torch
    state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    return {k: tuple(v.shape) for k, v in state.items()}


def read_draft(draft_dir: Path) -> tuple[DraftDims, Path]:
    """The draft's dimensions (``num_q`` from ``imadpt.q``), checked against its weights."""
    config_path = draft_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"ViSpec draft checkpoint {draft_dir} has no config.json")
    cfg = json.loads(config_path.read_text())
    weights = weight_file(draft_dir)
    shapes = tensor_shapes(weights)
    if "imadpt.q" not in shapes or len(shapes["imadpt.q"]) != 3:
        raise ValueError(
            f"ViSpec draft checkpoint {weights} has no image adaptor queries 'imadpt.q' "
            "[num_q, heads, head_dim]: is this an EAGLE draft rather than a ViSpec one?")
    dims = dims_from_config(cfg, num_q=shapes["imadpt.q"][0])
    check_shapes(shapes, dims, where=str(weights))
    return dims, weights


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
    """Checks the draft and writes the directory vLLM loads: our config + its weights."""
    draft_dir = locate_draft(model)
    dims, weights = read_draft(draft_dir)
    check_against_target(dims, str(draft_dir), target_name, target_hidden, target_vocab)
    # The published drafts cache RoPE only up to their max_position_embeddings; serve
    # the target's whole context.
    dims = replace(dims, max_position_embeddings=max(dims.max_position_embeddings,
                                                     target_max_len))
    config = vllm_config_dict(dims, source=str(draft_dir), drafting=drafting)
    stat = weights.stat()
    key = hashlib.sha256(json.dumps(
        [str(weights), stat.st_size, stat.st_mtime_ns, config], sort_keys=True).encode()
    ).hexdigest()[:16]
    out = cache_root() / "prepared" / key
    if (out / "config.json").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".tmp-"))
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    os.symlink(weights, tmp / weights.name)
    try:
        os.rename(tmp, out)
    except OSError:  # another process prepared the same draft first
        shutil.rmtree(tmp, ignore_errors=True)
    return out
