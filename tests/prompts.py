"""The conversations every greedy-equality test sends: text-only, one image, two images;
and the video conversations of the video tests (Qwen2.5-VL only)."""

from __future__ import annotations

import base64
import io

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


# ---- videos ------------------------------------------------------------------------------

def video_frames(seed: int, num_frames: int, size: tuple[int, int] = (112, 112)) -> list:
    """A few generated pictures as the frames of one video."""
    return [shapes_image(seed * 100 + i, size) for i in range(num_frames)]


def video_part(frames) -> dict:
    """A chat part carrying ``frames`` as vLLM's JPEG-sequence video data URL (no video
    codec needed; every frame is sent)."""
    encoded = []
    for frame in frames:
        buf = io.BytesIO()
        frame.save(buf, format="JPEG", quality=95)
        encoded.append(base64.b64encode(buf.getvalue()).decode())
    return {"type": "video_url", "video_url": {"url": "data:video/jpeg;base64,"
                                                      + ",".join(encoded)}}


def video_conversations() -> dict[str, list[dict]]:
    """Video prompts (32 and 27 video tokens on the tiny Qwen2.5-VL target) next to an
    image prompt, all sent as one batch."""
    return {
        "one_video": [{"role": "user", "content": [
            video_part(video_frames(1, 4)), text("Describe the video.")]}],
        "video_after_text": [{"role": "user", "content": [
            text("What moves here?"), video_part(video_frames(2, 6, (84, 84)))]}],
        "one_image": conversations()["one_image"],
    }


def image_and_video_conversation() -> list[dict]:
    return [{"role": "user", "content": [image_part(shapes_image(5)),
                                         video_part(video_frames(3, 2)),
                                         text("Compare them.")]}]
