"""The conversations the equality checks send: text only, one image, two images."""

from __future__ import annotations

from ..tiny.images import image_part, shapes_image

PROMPT_LABELS = {"text": "text only", "one_image": "one image", "two_images": "two images"}


def conversations() -> dict[str, list[dict]]:
    def text(t: str) -> dict:
        return {"type": "text", "text": t}
    return {
        "text": [{"role": "user", "content": "What is in the picture?"}],
        "one_image": [{"role": "user", "content": [image_part(shapes_image(1)),
                                                   text("Describe the image.")]}],
        "two_images": [{"role": "user", "content": [
            image_part(shapes_image(3)), text("and"), image_part(shapes_image(4, (64, 96))),
            text("Compare the two pictures.")]}],
    }
