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
