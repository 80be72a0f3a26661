"""Small generated pictures (coloured shapes) and their data URLs for chat requests."""

from __future__ import annotations

import base64
import io
import random

from PIL import Image, ImageDraw

from .tokenizer import COLORS


def shapes_image(seed: int, size: tuple[int, int] = (96, 96)) -> Image.Image:
    rng = random.Random(seed)
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(1, 4)):
        x, y = rng.randint(0, size[0] - 30), rng.randint(0, size[1] - 30)
        box = (x, y, x + rng.randint(10, 30), y + rng.randint(10, 30))
        color = rng.choice(COLORS[:-1])
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=color)
    return img


def data_url(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def image_part(img: Image.Image) -> dict:
    return {"type": "image_url", "image_url": {"url": data_url(img)}}
