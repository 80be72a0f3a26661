"""A tiny Qwen target (Qwen2.5-VL by default, or Qwen3-VL) with a chat template that also
places videos.

The tiny targets' template (tiny/targets.py, shared by tiny/qwen3_target.py) places images
only; a real Qwen2.5-VL or Qwen3-VL template places
``<|vision_start|><|video_pad|><|vision_end|>`` for a video part (Qwen3-VL's processor then
puts each frame's timestamp text before its tokens). The view links every file of the
built target but its template, so weights, tokenizer and processors are the target's own,
and both the vispec runs and the plugin-free baselines load it by path.
"""

from __future__ import annotations

import json
from pathlib import Path

from vllm_vispec.tiny import tiny_target

TEMPLATE = "chat_template.jinja"
IMAGE_BRANCH = "{% elif part['type'] == 'text' %}"
VIDEO_BRANCH = ("{% elif part['type'] in ['video', 'video_url'] %}"
                "<|vision_start|><|video_pad|><|vision_end|>")
VIDEO_KINDS = ("qwen2_5_vl", "qwen3_vl")


def video_chat_target(out: Path, kind: str = "qwen2_5_vl") -> Path:
    if kind not in VIDEO_KINDS:
        raise ValueError(f"no video view of the tiny {kind!r} target; one of {VIDEO_KINDS}")
    target = tiny_target(kind)
    out.mkdir(parents=True, exist_ok=True)
    for path in target.iterdir():
        if path.name != TEMPLATE and not (out / path.name).exists():
            (out / path.name).symlink_to(path)
    template = (target / TEMPLATE).read_text()
    assert IMAGE_BRANCH in template, "the tiny target's chat template changed"
    (out / TEMPLATE).write_text(template.replace(IMAGE_BRANCH, VIDEO_BRANCH + IMAGE_BRANCH))
    return out


def video_token_id(target: Path) -> int:
    return json.loads((target / "config.json").read_text())["video_token_id"]
