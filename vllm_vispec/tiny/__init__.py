"""Tiny LLaVA, Qwen2.5-VL and Qwen3-VL targets with ViSpec drafts, built locally and cached.

Used by the demo and the tests; nothing is downloaded. Builds are keyed by a hash of the
builder sources, so a change to a builder rebuilds its models. The trained demo target and
its drafts take most of an hour to build, so they are keyed by ``DEMO_VERSION`` instead.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from ..model.checkpoint import cache_root

TARGETS = ("llava", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe")
DEMO_VERSION = "v3"  # bump when the demo target's or its drafts' recipe changes
DEMO_TARGET_MINUTES = 30.0


def _build_key() -> str:
    here = Path(__file__).parent
    sources = sorted(here.glob("*.py")) + [here.parent / "model" / "layout.py",
                                           here.parent / "train" / "draft_dims.py"]
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sources)).hexdigest()
    return digest[:12]


def _ensure(name: str, build, key: str | None = None, marker: str = "config.json") -> Path:
    out = cache_root() / "tiny" / f"{name}-{key or _build_key()}"
    if (out / marker).is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{name}-"))
    try:
        build(tmp)
        os.rename(tmp, out)
    except OSError:
        if not (out / marker).is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def tiny_target(kind: str) -> Path:
    """Path of the tiny target ``kind`` (one of ``TARGETS``), built if needed."""
    from .qwen3_moe_target import build_tiny_qwen3vl_moe
    from .qwen3_target import build_tiny_qwen3vl
    from .targets import build_tiny_llava, build_tiny_qwen25vl
    builders = {"llava": build_tiny_llava, "qwen2_5_vl": build_tiny_qwen25vl,
                "qwen3_vl": build_tiny_qwen3vl, "qwen3_vl_moe": build_tiny_qwen3vl_moe}
    if kind not in builders:
        raise ValueError(f"unknown tiny target {kind!r}; choose from {TARGETS}")
    return _ensure(kind, builders[kind])


# The layout a target family's drafts come in where ``tiny_draft`` is not told: Qwen3-VL
# has no published ViSpec drafts, only NeMo Automodel's.
DRAFT_LAYOUTS = {"qwen3_vl": "automodel", "qwen3_vl_moe": "automodel"}


def tiny_draft(kind: str, num_q: int = 2, seed: int = 0, layout: str | None = None) -> Path:
    """A ViSpec draft for ``tiny_target(kind)`` in the published checkpoint layout, or made
    from it in NeMo Automodel's (``layout``: see automodel_drafts.py for the variants); by
    default in the layout of the family's drafts (``DRAFT_LAYOUTS``)."""
    from .drafts import build_tiny_draft
    layout = layout or DRAFT_LAYOUTS.get(kind, "published")
    target = tiny_target(kind)
    name = f"{kind}-vispec-q{num_q}-s{seed}"
    published = _ensure(name, lambda out: build_tiny_draft(target, out, seed=seed,
                                                           num_q=num_q))
    if layout == "published":
        return published
    from .automodel_drafts import build_automodel_draft
    return _ensure(f"{name}-{layout}", lambda out: build_automodel_draft(
        published, target, out, layout, seed=seed))


def trained_demo_target(minutes: float = DEMO_TARGET_MINUTES) -> Path:
    """The trained demo target (``tiny/demo_target.py``): built once, in ``minutes`` of
    training on the CPU, then cached."""
    from .demo_target import train_demo_target
    key = DEMO_VERSION if minutes == DEMO_TARGET_MINUTES else f"{DEMO_VERSION}-{minutes:g}min"
    return _ensure("demo-target", lambda out: train_demo_target(out, minutes=minutes), key=key)


def trained_demo_drafts() -> dict[str, Path]:
    """ViSpec and text-only EAGLE drafts for :func:`trained_demo_target`, trained by
    ``vispec-train recipe`` with its defaults (same data and budget for both), then
    cached."""
    from ..train.cli import main as vispec_train
    target = trained_demo_target()
    root = _ensure("demo-drafts", lambda out: vispec_train(
        ["recipe", "--target", str(target), "--out", str(out)]), key=DEMO_VERSION,
        marker="eagle/draft/config.json")
    return {arch: root / arch / "draft" for arch in ("vispec", "eagle")}


# The image-token series (benchmarks/image_tokens.py): the demo target, then the same scenes
# at 144 and 576 image tokens per picture, each warm-started from the one before
# (tiny/scaled_target.py), with training minutes on the 2-core machine. A step at 576
# tokens costs about 3x one at 144, so that size takes 8 pictures a step, not 16: more
# updates in its budget.
IMAGE_TOKEN_SERIES = {36: 12.0, 144: 10.0, 576: 20.0}
SERIES_BATCH_SIZE = {144: 16, 576: 8}


def image_token_target(image_tokens: int) -> Path:
    """The series' target with ``image_tokens`` per picture, built (with the smaller ones
    it starts from) if needed, then cached."""
    if image_tokens not in IMAGE_TOKEN_SERIES:
        raise ValueError(f"no demo target with {image_tokens} image tokens per picture; "
                         f"choose from {sorted(IMAGE_TOKEN_SERIES)}")
    minutes = IMAGE_TOKEN_SERIES[image_tokens]
    sizes = sorted(IMAGE_TOKEN_SERIES)
    if image_tokens == sizes[0]:
        return trained_demo_target(minutes)
    from .scaled_target import picture_size_for, train_scaled_target
    base = image_token_target(sizes[sizes.index(image_tokens) - 1])
    batch = SERIES_BATCH_SIZE[image_tokens]
    return _ensure(f"demo-target-{image_tokens}tok", lambda out: train_scaled_target(
        base, out, picture_size_for(image_tokens), minutes, batch_size=batch),
        key=f"{DEMO_VERSION}-{minutes:g}min-b{batch}")


def image_token_drafts(image_tokens: int) -> dict[str, Path]:
    """ViSpec and text-only EAGLE drafts for :func:`image_token_target`, trained by
    ``vispec-train recipe`` with its defaults on pictures drawn at the target's size."""
    from ..train.cli import main as vispec_train
    from .scaled_target import picture_size_for
    target = image_token_target(image_tokens)
    pixels = picture_size_for(image_tokens)
    prompts = ["--prompts", f"vllm_vispec.tiny.prompts:demo_prompts_{pixels}"] \
        if pixels != 84 else []
    # Keyed by the target's own cache folder: a retrained target gets new drafts.
    root = _ensure("demo-drafts", lambda out: vispec_train(
        ["recipe", "--target", str(target), "--out", str(out), *prompts]),
        key=f"for-{target.name}", marker="eagle/draft/config.json")
    return {arch: root / arch / "draft" for arch in ("vispec", "eagle")}
