"""The pictures a prompt file refers to: local paths (relative to an image folder),
``file://`` and http(s) URLs, ``data:`` URIs; read as RGB, transparency over white as vLLM
does, so the target's answers (vLLM) and its recorded features (HF) see the same pixels."""

from __future__ import annotations

import base64
import io
import urllib.parse
import urllib.request
from pathlib import Path

from PIL import Image

from .prompt_files import PromptFileError

REMOTE = ("http://", "https://")
URL_TIMEOUT_S = 60


def shown(ref: str, limit: int = 80) -> str:
    """A reference short enough for a message (data URIs are long)."""
    return ref if len(ref) <= limit else ref[:limit - 3] + "..."


def local_path(ref: str, root: Path) -> Path | None:
    """Where a local reference points; None for URLs and data URIs."""
    if ref.startswith(REMOTE) or ref.startswith("data:"):
        return None
    if ref.startswith("file://"):
        return Path(urllib.parse.unquote(urllib.parse.urlparse(ref).path))
    return root / ref  # an absolute ref stays itself


def missing_image(ref: str, root: Path) -> Path | None:
    """The path of a local picture that is not there, or None."""
    path = local_path(ref, root)
    return path if path is not None and not path.is_file() else None


def _data_uri_bytes(ref: str) -> bytes:
    header, comma, payload = ref.partition(",")
    if not comma:
        raise ValueError("a data URI needs a ',' before its payload")
    if header.endswith(";base64"):
        return base64.b64decode(payload, validate=True)
    return urllib.parse.unquote_to_bytes(payload)


def to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        out = Image.new("RGB", rgba.size, (255, 255, 255))
        out.paste(rgba, mask=rgba.split()[3])
        return out
    return img.convert("RGB")


def load_image(ref: str, root: Path, where: str) -> Image.Image:
    try:
        if ref.startswith("data:"):
            raw = _data_uri_bytes(ref)
        elif ref.startswith(REMOTE):
            with urllib.request.urlopen(ref, timeout=URL_TIMEOUT_S) as response:
                raw = response.read()
        else:
            path = local_path(ref, root)
            if not path.is_file():
                raise PromptFileError(f"{where}: image {shown(ref)} not found ({path})")
            raw = path.read_bytes()
        img = Image.open(io.BytesIO(raw))
        img.load()
    except PromptFileError:
        raise
    except Exception as e:  # noqa: BLE001 - any unreadable picture, named with its entry
        raise PromptFileError(f"{where}: image {shown(ref)} could not be read: {e}") from None
    return to_rgb(img)
