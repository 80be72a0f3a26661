"""Where the target's training prompts come from: a user's prompt file (``prompt_files``)
or a Python function (``MODULE:FUNCTION``, e.g. the demo domain's generator), as
(chat messages, PIL images) pairs, the pictures in the order the messages show them.

A file's pictures are read when a pair is used, so a large set is never held in memory
at once; its local pictures are all checked to exist before any work starts.
"""

from __future__ import annotations

import importlib
import random
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from tqdm import tqdm

from .prompt_files import IMAGE_TOKEN, PromptFileError, PromptRecord, read_prompt_file
from .prompt_images import load_image, missing_image, shown

# ViSpec's data generation asks for long answers, so the draft trains on long outputs.
LONG_ANSWER_INSTRUCTION = "Please answer with at least 1000 words."
ENTRY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
SHOWN_MISSING = 5
QUIET_BELOW = 10_000  # no progress bar for checks over fewer prompts

Pair = tuple[list, list]


def is_entry(source: str) -> bool:
    return bool(ENTRY.match(source)) and not Path(source).exists()


def resolve_entry(source: str) -> Callable[..., Sequence[Pair]]:
    """``MODULE:FUNCTION`` -> the function, ``(count, seed, images=...) -> pairs``."""
    module, _, name = source.partition(":")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise PromptFileError(f"prompt source {source}: {e}") from None
    if not callable(fn):
        raise PromptFileError(f"prompt source {source} is not a function")
    return fn


def with_long_answers(messages: list) -> list:
    """A copy whose last user turn ends with ViSpec's long-answer instruction."""
    out = [dict(m) for m in messages]
    last = next(m for m in reversed(out) if m["role"] == "user")
    content = last["content"]
    if isinstance(content, str):
        last["content"] = f"{content} {LONG_ANSWER_INSTRUCTION}"
    elif content and content[-1].get("type") == "text":
        end = dict(content[-1], text=f"{content[-1]['text']} {LONG_ANSWER_INSTRUCTION}")
        last["content"] = [*content[:-1], end]
    else:
        last["content"] = [*content, {"type": "text", "text": LONG_ANSWER_INSTRUCTION}]
    return out


def _turn_content(turn: str, pictures: list) -> str | list:
    """A user turn as chat content: its text with the pictures where ``<image>`` stands
    (each placeholder takes the next picture)."""
    pieces = [p.strip() for p in turn.split(IMAGE_TOKEN)]
    if not pictures:
        return " ".join(p for p in pieces if p)
    parts = []
    for i, piece in enumerate(pieces):
        if i:
            parts.append({"type": "image_pil", "image_pil": pictures.pop(0)})
        if piece:
            parts.append({"type": "text", "text": piece})
    return parts


def chat_messages(record: PromptRecord, pictures: list) -> list:
    """A record as chat messages; pictures without placeholders go before the first turn's
    text, as LLaVA's data puts them."""
    turns = list(record.turns)
    if pictures and not record.placeholders:
        turns[0] = IMAGE_TOKEN * len(pictures) + turns[0]
    queue = list(pictures)
    messages = [{"role": "system", "content": record.system}] if record.system else []
    messages += [{"role": "user", "content": _turn_content(t, queue)} for t in turns]
    return messages


class PromptFile(Sequence):
    """The prompts of a file as pairs, each picture read when its pair is used."""

    def __init__(self, records: list[PromptRecord], image_root: Path, images: bool = True,
                 long_answers: bool = False) -> None:
        self.records, self.image_root = records, image_root
        self.images, self.long_answers = images, long_answers

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return PromptFile(self.records[index], self.image_root, self.images,
                              self.long_answers)
        record = self.records[index]
        refs = record.images if self.images else ()
        pictures = [load_image(ref, self.image_root, record.where) for ref in refs]
        messages = chat_messages(record, pictures)
        return (with_long_answers(messages) if self.long_answers else messages), pictures

    @property
    def max_images(self) -> int:
        return max((len(r.images) for r in self.records), default=0) if self.images else 0

    def missing_images(self) -> list[str]:
        """One line per local picture that is not there."""
        out = []
        for record in tqdm(self.records, desc="checking images", unit="prompt",
                           disable=len(self.records) < QUIET_BELOW):
            for ref in record.images:
                path = missing_image(ref, self.image_root)
                if path is not None:
                    out.append(f"{record.where}: image {shown(ref)} not found ({path})")
        return out


def default_image_root(path: Path, fmt: str) -> Path:
    """The prompt file's folder; for COCO's ``annotations/captions_SPLIT.json`` the
    ``SPLIT`` folder beside ``annotations`` when there is one."""
    split = path.stem.removeprefix("captions_")
    if fmt == "coco" and split != path.stem and (path.parent.parent / split).is_dir():
        return path.parent.parent / split
    return path.parent


def select(records: list, count: int | None, seed: int) -> list:
    """``count`` records drawn with ``seed`` (in file order), or all of them."""
    if count is None or count >= len(records):
        return records
    keep = sorted(random.Random(seed).sample(range(len(records)), count))
    return [records[i] for i in keep]


def open_prompt_file(path: Path, count: int | None = None, seed: int = 0, *,
                     images: bool = True, fmt: str = "auto", image_root: Path | None = None,
                     long_answers: bool = False) -> PromptFile:
    """The prompts of a file (``count`` of them drawn with ``seed``, or all); refuses a
    malformed file and missing pictures, naming each."""
    path = Path(path)
    fmt, records = read_prompt_file(path, fmt)
    root = Path(image_root) if image_root is not None else default_image_root(path, fmt)
    prompts = PromptFile(select(records, count, seed), root, images, long_answers)
    missing = prompts.missing_images() if images else []
    if missing:
        more = len(missing) - SHOWN_MISSING
        raise PromptFileError(
            f"{path}: {len(missing)} picture(s) missing (image folder {root}; --image-root "
            "sets it):\n  " + "\n  ".join(missing[:SHOWN_MISSING])
            + (f"\n  and {more} more" if more > 0 else ""))
    return prompts


def open_prompts(source: str, count: int | None, seed: int = 0, *, images: bool = True,
                 fmt: str = "auto", image_root: Path | None = None,
                 long_answers: bool = False) -> Sequence[Pair]:
    """Prompts from a file or from ``MODULE:FUNCTION`` (which makes ``count`` of them)."""
    if not is_entry(source):
        return open_prompt_file(Path(source), count, seed, images=images, fmt=fmt,
                                image_root=image_root, long_answers=long_answers)
    if count is None:
        raise PromptFileError(f"prompt source {source} needs a prompt count")
    pairs = resolve_entry(source)(count, seed, images=images)
    if long_answers:
        pairs = [(with_long_answers(messages), pictures) for messages, pictures in pairs]
    return pairs
