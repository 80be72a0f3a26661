"""The conversations every greedy-equality test sends: text-only, one image, two images."""

from __future__ import annotations

from vllm_vispec.tiny.images import image_part, shapes_image


def text(t: str) -> dict:
    return {"type": "text", "text": t}


def conversations() -> dict[str, list[dict]]:
    return {
        "text": [{"role": "user", "content": "What is in the picture?"}],
        "text_parts": [{"role": "user", "content": [text("Describe a red circle near the top.")]}],
        "one_image": [{"role": "user", "content": [image_part(shapes_image(1)),
                                                   text("Describe the image.")]}],
        "one_image_after_text": [{"role": "user", "content": [
            text("How many shapes are there?"), image_part(shapes_image(2, (80, 64)))]}],
        "two_images": [{"role": "user", "content": [
            image_part(shapes_image(3)), text("and"), image_part(shapes_image(4, (64, 96))),
            text("Compare the two pictures.")]}],
    }
