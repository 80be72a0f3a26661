"""Prompts in the demo domain (``scenes``): what ``vispec-train`` trains the demo drafts on
when no prompt file is given, and what the benchmarks ask the demo target."""

from __future__ import annotations

import random

from . import scenes
from .images import image_part

TEXT_QUESTIONS = ["Describe a picture of shapes.", "What shapes could a picture show?",
                  "Name some colors.", "Where can a shape be in a picture?"]


def demo_prompts(count: int, seed: int = 0, images: bool = True,
                 image_size: int = 84) -> list[tuple[list, list]]:
    """(chat messages, PIL images) pairs, one picture of coloured shapes each; text-only
    (stage 1) without images."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        if not images:
            question = rng.choice(TEXT_QUESTIONS)
            out.append(([{"role": "user", "content": question}], []))
            continue
        img = scenes.draw(scenes.random_scene(rng), image_size)
        content = [image_part(img), {"type": "text", "text": rng.choice(scenes.QUESTIONS)}]
        out.append(([{"role": "user", "content": content}], [img]))
    return out


def multi_picture_prompts(count: int, seed: int = 0, image_size: int = 84,
                          pictures: tuple[int, int] = (2, 4)) -> list[tuple[list, list]]:
    """(chat messages, PIL images) pairs with 2 to 4 pictures of coloured shapes each,
    asked to describe them: many image tokens in one context."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        imgs = [scenes.draw(scenes.random_scene(rng), image_size)
                for _ in range(rng.randint(*pictures))]
        content = [*(image_part(img) for img in imgs),
                   {"type": "text", "text": "Describe the images."}]
        out.append(([{"role": "user", "content": content}], imgs))
    return out


def _drawn_at(image_size: int):
    def prompts(count: int, seed: int = 0, images: bool = True) -> list[tuple[list, list]]:
        return demo_prompts(count, seed, images, image_size)
    prompts.__doc__ = f"demo_prompts with {image_size}x{image_size} pictures."
    return prompts


# For the demo targets at more image tokens per picture (tiny/scaled_target.py), as
# ``vispec-train --prompts vllm_vispec.tiny.prompts:demo_prompts_336`` takes them.
demo_prompts_168 = _drawn_at(168)
demo_prompts_336 = _drawn_at(336)
