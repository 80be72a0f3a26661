"""Tiny models the draft-overhead benchmark needs beyond ``vllm_vispec.tiny``, built locally
and cached next to them (same ``_ensure`` mechanism, keyed by this file and the tiny
builders' sources):

- ``eagle_draft(vispec_draft, target, name)``: a tiny ViSpec draft as vLLM's own EAGLE-1
  Llama draft (``"method": "eagle"``): ``fc`` without bias, ``layers.0.*`` (no input norm) and
  ``embed_tokens``; ``imadpt``/``img_fc`` dropped, lm_head shared from the target. The tiny
  drafts' fc bias is zero and their img_fc is ``[I | 0]``, so the two drafts differ only
  in what ViSpec does with pictures.
- ``llava_with_image_size(pixels)``: the tiny LLaVA with a CLIP tower for square pictures
  of ``pixels`` (``(pixels / 14)^2`` image tokens each; random position embeddings of the
  new grid) and 4096 positions, with its ViSpec and EAGLE drafts.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

PATCH = 14
MAX_POSITIONS = 4096
MAX_IMAGES = 8


def _key() -> str:
    from vllm_vispec.tiny import _build_key
    return hashlib.sha256(Path(__file__).read_bytes() + _build_key().encode()).hexdigest()[:12]


def image_layout(tokens: int) -> tuple[int, int]:
    """(pictures, pixels per side) giving ``tokens`` image tokens: the fewest square
    pictures of equal size (2880 -> 5 pictures of 336 px, 576 tokens each)."""
    for images in range(1, MAX_IMAGES + 1):
        side = math.isqrt(tokens // images)
        if tokens % images == 0 and side * side * images == tokens and side > 0:
            return images, side * PATCH
    raise SystemExit(f"{tokens} image tokens is not 1 to {MAX_IMAGES} square pictures of "
                     f"equal size; try e.g. 36, 576 or 2880")


def build_eagle_draft(vispec_draft: Path, target: Path, out: Path) -> None:
    from safetensors.torch import load_file, save_file

    from vllm_vispec.model.layout import dims_from_config
    from vllm_vispec.train.export import eagle_config
    cfg = json.loads((vispec_draft / "config.json").read_text())
    state = load_file(vispec_draft / "model.safetensors")
    bias = state.get("fc.bias")
    if bias is not None and bias.abs().max() > 0:
        raise ValueError(f"{vispec_draft}: fc has a non-zero bias; vLLM's EAGLE-1 fc has none")
    weights = {k: v.contiguous() for k, v in state.items()
               if k == "fc.weight" or k.startswith(("layers.", "embed_tokens."))}
    target_cfg = json.loads((target / "config.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(
        eagle_config(dims_from_config(cfg, num_q=2), target_cfg), indent=2))
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})


def eagle_draft(vispec_draft: Path, target: Path, name: str) -> Path:
    """``vispec_draft`` in vLLM's EAGLE-1 layout, cached as ``name``."""
    from vllm_vispec.tiny import _ensure
    return _ensure(name, lambda out: build_eagle_draft(Path(vispec_draft), Path(target), out),
                   key=_key())


def _resize_llava(out: Path, pixels: int) -> None:
    """The tiny LLaVA at ``out`` re-cut for ``pixels``-px pictures and MAX_POSITIONS."""
    import torch
    from safetensors.torch import load_file, save_file
    grid = (pixels // PATCH) ** 2
    cfg = json.loads((out / "config.json").read_text())
    cfg["vision_config"]["image_size"] = pixels
    cfg["image_seq_length"] = grid
    cfg["text_config"]["max_position_embeddings"] = MAX_POSITIONS
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    proc = json.loads((out / "processor_config.json").read_text())
    proc["image_processor"]["size"] = {"shortest_edge": pixels}
    proc["image_processor"]["crop_size"] = {"height": pixels, "width": pixels}
    (out / "processor_config.json").write_text(json.dumps(proc, indent=2))
    state = {k: v.clone() for k, v in load_file(out / "model.safetensors").items()}
    (key,) = [k for k in state if k.endswith("embeddings.position_embedding.weight")]
    gen = torch.Generator().manual_seed(pixels)
    state[key] = torch.randn(grid + 1, state[key].shape[1], generator=gen) * 0.02
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})


def llava_with_image_size(pixels: int) -> dict[str, Path]:
    """{"target", "vispec", "eagle"}: the tiny LLaVA for ``pixels``-px pictures, drafts."""
    from vllm_vispec.tiny import _ensure
    from vllm_vispec.tiny.drafts import build_tiny_draft
    from vllm_vispec.tiny.targets import build_tiny_llava
    if pixels % PATCH:
        raise ValueError(f"picture size {pixels} is not a multiple of the {PATCH}-px patch")
    key = _key()

    def target_build(out: Path) -> None:
        build_tiny_llava(out)
        _resize_llava(out, pixels)
    target = _ensure(f"llava-img{pixels}", target_build, key=key)

    def vispec_build(out: Path) -> None:
        build_tiny_draft(target, out)
        cfg = json.loads((out / "config.json").read_text())
        cfg["max_position_embeddings"] = MAX_POSITIONS
        (out / "config.json").write_text(json.dumps(cfg, indent=2))
    vispec = _ensure(f"llava-img{pixels}-vispec", vispec_build, key=key)
    return {"target": target, "vispec": vispec,
            "eagle": eagle_draft(vispec, target, f"llava-img{pixels}-eagle")}
