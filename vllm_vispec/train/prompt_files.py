"""Reading a user's prompt file into prompt records, in the formats prompt sets come in.

- ``jsonl``: one ``{"image": REF, "question": TEXT}`` per line (``"images": [REF, ...]``
  for several pictures, neither for a text-only prompt; ``prompt`` or ``text`` also name
  the question);
- ``coco``: COCO captions (``annotations/captions_*.json``): one prompt per image asking
  to describe it; the captions themselves are not used, the target writes the answers;
- ``conversations``: LLaVA-Pretrain / ShareGPT, a JSON list of ``{"image": REF,
  "conversations": [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", ...}]}``:
  the human turns are the prompt, the gpt turns are dropped (the target answers instead,
  as ViSpec's data generation does).

A REF is a path (relative ones resolve against the image folder), an http(s) URL or a
``data:`` URI. ``<image>`` in a question marks where its pictures go. Every problem is
reported with the file and the line or entry it is in.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

FORMATS = ("jsonl", "coco", "conversations")
IMAGE_TOKEN = "<image>"
COCO_QUESTION = "Describe the image."
QUESTION_KEYS = ("question", "prompt", "text")
HUMAN, DROPPED, SYSTEM = ("human", "user"), ("gpt", "assistant", "chatgpt", "bard", "bing",
                                             "model"), ("system",)


class PromptFileError(ValueError):
    """A prompt file that cannot be used; the message names the file and the entry."""


@dataclass(frozen=True)
class PromptRecord:
    turns: tuple[str, ...]  # the user's turns, in order; IMAGE_TOKEN marks a picture
    images: tuple[str, ...] = ()  # image references as the file writes them
    where: str = ""  # "FILE line N" or "FILE entry N", for messages
    system: str | None = None

    @property
    def placeholders(self) -> int:
        return sum(turn.count(IMAGE_TOKEN) for turn in self.turns)


def read_prompt_file(path: Path, fmt: str = "auto") -> tuple[str, list[PromptRecord]]:
    """(the format read, the records), refusing malformed files with a message that names
    the file, the line or entry and the problem."""
    path = Path(path)
    if not path.is_file():
        raise PromptFileError(f"prompt file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    whole = _whole_json(text)  # parsed once: LLaVA-Pretrain's list is 180 MB
    if fmt == "auto":
        fmt = detect_format(path, text, whole)
    elif fmt not in FORMATS:
        raise PromptFileError(f"unknown prompt format {fmt!r}; choose from {FORMATS}")
    if fmt == "jsonl":
        records = _read_jsonl(path, text)
    else:
        if isinstance(whole, json.JSONDecodeError):
            raise PromptFileError(f"{path}: not JSON ({whole.msg} at line {whole.lineno})")
        records = (_read_coco if fmt == "coco" else _read_conversations)(path, whole)
    if not records:
        raise PromptFileError(f"{path} holds no prompts")
    return fmt, records


def _whole_json(text: str):
    """The file as one JSON value, or the error (JSON lines are not one value)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        return e


def detect_format(path: Path, text: str, whole=None) -> str:
    """The format, from the content: a JSON list is conversations, a JSON object with
    ``images`` and ``annotations`` is COCO, JSON objects one per line are jsonl."""
    whole = _whole_json(text) if whole is None else whole
    if isinstance(whole, list):
        return "conversations"
    if isinstance(whole, dict) and ("images" in whole or "annotations" in whole):
        return "coco"
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise PromptFileError(f"{path} is empty")
    if isinstance(whole, dict) and len(lines) > 1:
        raise PromptFileError(f"{path}: a JSON object that is not COCO captions (no 'images' "
                              "or 'annotations'); question records go one per line (jsonl)")
    first = lines[0]
    try:
        row = json.loads(first)
    except json.JSONDecodeError as e:
        raise PromptFileError(
            f"{path}: not a prompt file: neither JSON (a COCO captions object or a list of "
            f"conversations) nor JSON lines (line 1: {e.msg})") from None
    if not isinstance(row, dict):
        raise PromptFileError(f"{path} line 1: expected a JSON object per line, got "
                              f"{type(row).__name__}")
    return "jsonl"


def _image_refs(row: dict, where: str) -> tuple[str, ...]:
    if "image" in row and "images" in row:
        raise PromptFileError(f"{where}: both 'image' and 'images'; give one")
    refs = row.get("images", row.get("image"))
    if refs is None:
        return ()
    refs = [refs] if isinstance(refs, str) else refs
    if not isinstance(refs, list) or not all(isinstance(r, str) and r for r in refs):
        raise PromptFileError(f"{where}: 'image' must be a path, URL or data URI "
                              "(a non-empty string), 'images' a list of them")
    return tuple(refs)


def _question(row: dict, where: str) -> str:
    for key in QUESTION_KEYS:
        if key in row:
            value = row[key]
            if not isinstance(value, str) or not value.strip():
                raise PromptFileError(f"{where}: '{key}' must be a non-empty string")
            return value
    raise PromptFileError(f"{where}: no question (one of {list(QUESTION_KEYS)}); "
                          f"keys are {sorted(row)}")


def _checked(record: PromptRecord) -> PromptRecord:
    """Placeholders, when a record writes any, must match its pictures one to one."""
    n = record.placeholders
    if n and n != len(record.images):
        raise PromptFileError(f"{record.where}: {len(record.images)} image(s) but {n} "
                              f"{IMAGE_TOKEN} placeholder(s)")
    return record


def _read_jsonl(path: Path, text: str) -> list[PromptRecord]:
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise PromptFileError(f"{where}: not JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(row, dict):
            raise PromptFileError(f"{where}: expected a JSON object, got "
                                  f"{type(row).__name__}")
        records.append(_checked(PromptRecord((_question(row, where),),
                                             _image_refs(row, where), where)))
    return records


def _read_coco(path: Path, data) -> list[PromptRecord]:
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise PromptFileError(f"{path}: not COCO captions: no 'images' list")
    if not isinstance(data.get("annotations"), list):
        raise PromptFileError(f"{path}: not COCO captions: no 'annotations' list")
    records, ids = [], set()
    for i, image in enumerate(data["images"]):
        where = f"{path} images[{i}]"
        if not isinstance(image, dict) or not isinstance(image.get("file_name"), str) \
                or not image["file_name"]:
            raise PromptFileError(f"{where}: needs a 'file_name'")
        ids.add(image.get("id"))
        records.append(PromptRecord((COCO_QUESTION,), (image["file_name"],), where))
    for i, note in enumerate(data["annotations"]):
        where = f"{path} annotations[{i}]"
        if not isinstance(note, dict) or "image_id" not in note or "caption" not in note:
            raise PromptFileError(f"{where}: needs 'image_id' and 'caption'")
        if note["image_id"] not in ids:
            raise PromptFileError(f"{where}: image_id {note['image_id']!r} is not in "
                                  "'images'")
    return records


def _read_conversations(path: Path, data) -> list[PromptRecord]:
    if not isinstance(data, list):
        raise PromptFileError(f"{path}: conversations must be a JSON list of entries")
    records = []
    for i, entry in enumerate(data):
        where = f"{path} entry {i}"
        if not isinstance(entry, dict) or not isinstance(entry.get("conversations"), list):
            raise PromptFileError(f"{where}: needs a 'conversations' list (question records "
                                  "go one per line in a .jsonl file)")
        turns, system = [], None
        for j, turn in enumerate(entry["conversations"]):
            if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
                raise PromptFileError(f"{where} turn {j}: needs 'from' and a string 'value'")
            role = turn.get("from")
            if role in HUMAN:
                turns.append(turn["value"])
            elif role in SYSTEM:
                system = turn["value"]
            elif role not in DROPPED:
                raise PromptFileError(f"{where} turn {j}: unknown speaker {role!r} (human "
                                      f"turns are {list(HUMAN)}, answers {list(DROPPED)})")
        if not any(t.strip() for t in turns):
            raise PromptFileError(f"{where}: no human turn")
        records.append(_checked(PromptRecord(tuple(turns), _image_refs(entry, where), where,
                                             system)))
    return records
