"""Prompt sets for the benchmarks: (chat messages, PIL images) pairs.

- ``demo``: held-out pictures of the demo domain (runs anywhere, no download);
- ``demo-multi``: the same with 2 to 4 pictures a prompt;
- ``*.jsonl``: one ``{"image": PATH, "question": TEXT}`` per line (``prompt`` or ``text``
  also name the question); paths are relative to the file. MMStar, VisionArena or any set
  exported this way;
- ``*.json`` in COCO captions format (``images`` with ``file_name``; pictures next to the
  file or in ``images/``), asked to "Describe the image.";
- ``*.parquet`` with ``image`` (``{"bytes": ...}``) and ``question`` columns: MMStar's own
  file (needs pandas and pyarrow).
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

from PIL import Image

from common import held_out_prompts


def chat(image: Image.Image, question: str) -> tuple[list, list]:
    from vllm_vispec.tiny.images import image_part
    image = image.convert("RGB")
    return ([{"role": "user", "content": [image_part(image),
                                          {"type": "text", "text": question}]}], [image])


def _question(row: dict) -> str:
    for key in ("question", "prompt", "text"):
        if row.get(key):
            return str(row[key])
    raise ValueError(f"no question/prompt/text in {sorted(row)}")


def _jsonl(path: Path) -> list[tuple[Image.Image | Path, str]]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [(path.parent / row["image"], _question(row)) for row in rows]


def _coco(path: Path) -> list[tuple[Image.Image | Path, str]]:
    data = json.loads(path.read_text())
    if "images" not in data:
        raise ValueError(f"{path}: not COCO captions format (no 'images')")
    out = []
    for img in data["images"]:
        file = path.parent / img["file_name"]
        out.append((file if file.exists() else path.parent / "images" / img["file_name"],
                    "Describe the image."))
    return out


def _parquet(path: Path) -> list[tuple[Image.Image | Path, str]]:
    import pandas as pd
    frame = pd.read_parquet(path)
    return [(Image.open(io.BytesIO(row["image"]["bytes"])), _question(row))
            for row in frame.to_dict("records")]


def load_prompts(name: str, count: int, seed: int,
                 image_size: int = 84) -> list[tuple[list, list]]:
    """``count`` prompts of dataset ``name``; demo pictures are drawn ``image_size``
    pixels square."""
    if name == "demo":
        return held_out_prompts(count, seed, image_size)
    if name == "demo-multi":
        from vllm_vispec.tiny.prompts import multi_picture_prompts
        return multi_picture_prompts(count, seed, image_size)
    path = Path(name)
    readers = {".jsonl": _jsonl, ".json": _coco, ".parquet": _parquet}
    if path.suffix not in readers or not path.is_file():
        raise SystemExit(f"--dataset {name!r}: use demo, demo-multi or an existing .jsonl, COCO .json or "
                         ".parquet file (see benchmarks/datasets_local.py)")
    rows = readers[path.suffix](path)
    if not rows:
        raise SystemExit(f"--dataset {name!r} holds no prompts")
    random.Random(seed).shuffle(rows)
    return [chat(img if isinstance(img, Image.Image) else Image.open(img), q)
            for img, q in rows[:count]]
