"""The trained demo target at more image tokens per picture: the same scenes drawn larger
and cut into the same 14x14 patches, so a picture is 144 (168x168) or 576 (336x336) image
tokens instead of 36, as LLaVA-1.5 has 576 and LLaVA-1.6 up to 2,880.

Each size is warm-started from the next smaller one (``tiny.scaled_demo_target`` chains
them from the 36-token demo target): the language model, the projector and the tower's
patch embedding carry over, the tower's position embeddings are resized (bicubic over the
grid, the class position kept), the tower is pre-trained again on the larger pictures (each
image token learns its cell's colour and shape) and then the projector and language model
are trained for the time budget, as for the demo target.
"""

from __future__ import annotations

import copy
import random
from pathlib import Path

import torch

from .demo_target import PATCH_SIZE, make_processor, pretrain_vision, save_target, \
    train_language_model

PICTURE_SIZES = {36: 84, 144: 168, 576: 336}  # image tokens per picture -> pixels


def picture_size_for(image_tokens: int) -> int:
    if image_tokens not in PICTURE_SIZES:
        raise ValueError(f"no demo target with {image_tokens} image tokens per picture; "
                         f"choose from {sorted(PICTURE_SIZES)}")
    return PICTURE_SIZES[image_tokens]


def resize_positions(weight: torch.Tensor, side: int) -> torch.Tensor:
    """CLIP position embeddings (class position, then a square grid in reading order)
    resized to a ``side`` x ``side`` grid, bicubic over the grid."""
    old = int(round((weight.shape[0] - 1) ** 0.5))
    if old * old != weight.shape[0] - 1:
        raise ValueError(f"{weight.shape[0] - 1} grid positions are not a square grid")
    grid = weight[1:].T.reshape(1, weight.shape[1], old, old)
    grid = torch.nn.functional.interpolate(grid.float(), size=(side, side), mode="bicubic",
                                           align_corners=False)
    grid = grid.reshape(weight.shape[1], side * side).T.to(weight.dtype)
    return torch.cat([weight[:1], grid])


def scaled_config(config, image_size: int):
    """``config`` (a LLaVA config) for square pictures of ``image_size`` pixels."""
    if image_size % PATCH_SIZE:
        raise ValueError(f"pictures of {image_size} pixels do not split into "
                         f"{PATCH_SIZE}-pixel patches")
    config = copy.deepcopy(config)
    # Room for prompts of several pictures (trained on one a prompt; RoPE has no table).
    config.text_config.max_position_embeddings = max(
        config.text_config.max_position_embeddings, 4096)
    config.vision_config.image_size = image_size
    config.image_seq_length = (image_size // PATCH_SIZE) ** 2
    return config


def scaled_model(base, image_size: int):
    """A LLaVA model for ``image_size``-pixel pictures holding ``base``'s weights, the
    tower's position embeddings resized."""
    from transformers import LlavaForConditionalGeneration
    model = LlavaForConditionalGeneration(scaled_config(base.config, image_size))
    state = base.state_dict()
    key = next(k for k in state if k.endswith("embeddings.position_embedding.weight"))
    state[key] = resize_positions(state[key], image_size // PATCH_SIZE)
    # position_ids is a non-persistent buffer sized by the new config, not copied.
    state = {k: v for k, v in state.items() if not k.endswith("embeddings.position_ids")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("embeddings.position_ids")]
    if missing or unexpected:
        raise ValueError(f"warm start did not carry every weight: missing {missing}, "
                         f"unexpected {unexpected}")
    return model


def train_scaled_target(base_path: Path, out: Path, image_size: int, minutes: float,
                        seed: int = 0, vision_steps: int = 150, lr: float = 5e-4,
                        batch_size: int = 16, progress: bool = True) -> dict:
    """The target at ``base_path`` retrained for ``image_size``-pixel pictures (see the
    module's docstring). The language model starts trained, so it gets half the demo
    target's learning rate and the single-shape warm-up is short."""
    from ..train.target_features import load_target
    base, base_processor = load_target(str(base_path))
    torch.manual_seed(seed)
    model = scaled_model(base, image_size).train()
    processor = make_processor(base_processor.tokenizer, image_size)
    # A lower rate than from scratch: the tower's features should stay what the
    # projector was trained on.
    vision_accuracy = pretrain_vision(model, processor, random.Random(seed + 1),
                                      steps=vision_steps, lr=1e-3, progress=progress)
    report = train_language_model(model, processor, minutes, batch_size=batch_size, lr=lr,
                                  seed=seed, single_shape_fraction=0.05, progress=progress)
    save_target(model, processor, out)
    return {**report, "vision_pretraining_accuracy": vision_accuracy}
