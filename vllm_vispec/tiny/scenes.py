"""Generated scenes of coloured shapes and their long, image-dependent descriptions: the
domain of the trained demo target."""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

COLORS = {"red": (220, 30, 30), "green": (30, 160, 60), "blue": (40, 70, 220),
          "yellow": (240, 210, 30), "purple": (140, 50, 170), "orange": (250, 140, 20),
          "black": (20, 20, 20)}
SHAPES = ("circle", "square", "triangle", "cross")
# One word per cell, so a cell's name is one token: the model looks a cell up in the
# picture from a single token (the lookup a small model learns in minutes).
CELLS = (("northwest", "north", "northeast"), ("west", "center", "east"),
         ("southwest", "south", "southeast"))
NUMBERS = ("zero", "one", "two", "three", "four")
QUESTIONS = ("Describe the image.", "What is in the picture?", "Describe the shapes.")


@dataclass(frozen=True)
class Item:
    color: str
    shape: str
    row: int
    col: int

    def place(self) -> str:
        return f"the {CELLS[self.row][self.col]}"


def random_scene(rng: random.Random, min_items: int = 1, max_items: int = 4) -> list[Item]:
    cells = rng.sample([(r, c) for r in range(3) for c in range(3)],
                       rng.randint(min_items, max_items))
    return [Item(rng.choice(list(COLORS)), rng.choice(SHAPES), r, c) for r, c in sorted(cells)]


def draw(scene: list[Item], size: int = 112) -> Image.Image:
    img = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(img)
    cell = size // 3
    for item in scene:
        x0, y0 = item.col * cell + 3, item.row * cell + 3
        x1, y1 = x0 + cell - 6, y0 + cell - 6
        fill = COLORS[item.color]
        if item.shape == "circle":
            d.ellipse((x0, y0, x1, y1), fill=fill)
        elif item.shape == "square":
            d.rectangle((x0, y0, x1, y1), fill=fill)
        elif item.shape == "triangle":
            d.polygon([((x0 + x1) // 2, y0), (x0, y1), (x1, y1)], fill=fill)
        else:
            w = (x1 - x0) // 3
            d.rectangle((x0 + w, y0, x1 - w, y1), fill=fill)
            d.rectangle((x0, y0 + w, x1, y1 - w), fill=fill)
    return img


def describe(scene: list[Item]) -> str:
    """A long answer (over 64 tokens) that only the picture can tell: every cell in reading
    order, then the count. A fixed order keeps each cell's words tied to one place in the
    picture."""
    by_cell = {(i.row, i.col): i for i in scene}
    parts = ["The picture shows shapes on a white background."]
    for row in range(3):
        for col in range(3):
            item = by_cell.get((row, col))
            what = f"a {item.color} {item.shape}" if item else "nothing"
            parts.append(f"In the {CELLS[row][col]} there is {what}.")
    n = len(scene)
    parts.append(f"In all, {NUMBERS[n]} {'shape' if n == 1 else 'shapes'}.")
    return " ".join(parts)


def corpus(count: int = 2000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [describe(random_scene(rng)) for _ in range(count)] + list(QUESTIONS)


def item_recall(scene: list[Item], text: str) -> float:
    """Share of the scene's items that ``text`` names with the right colour, shape and
    place: how much of an answer the picture decided."""
    return sum(f"In {i.place()} there is a {i.color} {i.shape}." in text
               for i in scene) / len(scene)
