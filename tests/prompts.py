"""The conversations every greedy-equality test sends: text-only, one image, two images."""

from __future__ import annotations

from vllm_vispec.tiny.images import image_part, shapes_image


def text(t: str) -> dict:
    return {"type": "text", "text": t}


def conversation_images() -> dict[str, list]:
    """The pictures of each conversation, in the order they appear."""
    return {
        "text": [],
        "text_parts": [],
        "one_image": [shapes_image(1)],
        "one_image_after_text": [shapes_image(2, (80, 64))],
        "two_images": [shapes_image(3), shapes_image(4, (64, 96))],
    }


def conversations() -> dict[str, list[dict]]:
    img = {name: [image_part(i) for i in images]
           for name, images in conversation_images().items()}
    return {
        "text": [{"role": "user", "content": "What is in the picture?"}],
        "text_parts": [{"role": "user", "content": [text("Describe a red circle near the top.")]}],
        "one_image": [{"role": "user", "content": [img["one_image"][0],
                                                   text("Describe the image.")]}],
        "one_image_after_text": [{"role": "user", "content": [
            text("How many shapes are there?"), img["one_image_after_text"][0]]}],
        "two_images": [{"role": "user", "content": [
            img["two_images"][0], text("and"), img["two_images"][1],
            text("Compare the two pictures.")]}],
    }
