"""``vispec-train data``: its prompt options (shared with ``recipe``), the formats help, and
the run: prompts -> the target's answers and features -> a data folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

COMPLETE = "complete"  # written last by `data`: the folder holds every sample
SETTINGS = "settings.json"  # what `data` made the samples from; `recipe` checks it
# The demo domain's prompt generator (vllm_vispec.tiny), imported only when used.
DEMO_PROMPTS = "vllm_vispec.tiny.prompts:demo_prompts"
DEMO_COUNTS = {"data": 64, "recipe": 300, "recipe-text": 100}

DESCRIPTION = """\
The target answers prompts greedily through vLLM (batched); its input embeddings and
post-norm hidden states are then recorded by teacher forcing (HF transformers), one file
per sample."""

PROMPT_FORMATS = """\
prompt files (--prompts FILE; the format is read from the content, or --prompts-format):
  jsonl          one {"image": REF, "question": "..."} per line; "images": [REF, ...] for
                 several pictures, neither for a text-only prompt ("prompt" or "text" may
                 name the question)
  coco           COCO captions (annotations/captions_*.json): each image is asked to be
                 described; --image-root is its picture folder (default: the folder named
                 like the split beside annotations/, else the file's folder)
  conversations  LLaVA-Pretrain / ShareGPT: a JSON list of {"image": REF, "conversations":
                 [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", ...}]}; the
                 human turns are the prompt, the target writes the answers (gpt turns are
                 dropped, as in ViSpec's data generation)
REF is a path relative to the image folder (--image-root, default the file's folder), an
absolute path, an http(s) URL or a data: URI; <image> in a question marks where its
picture goes (default: before the text). A malformed file is refused with the line or
entry and the problem; missing pictures are listed before any work starts.

--prompts MODULE:FUNCTION calls FUNCTION(count, seed, images=...) for (chat messages, PIL
images) pairs instead; the default is the demo domain, pictures of coloured shapes for the
tiny demo target."""


def add_prompt_options(p: argparse.ArgumentParser) -> None:
    """How prompt files are read and answered: shared by ``data`` and ``recipe``."""
    p.add_argument("--prompts-format", default="auto",
                   choices=["auto", "jsonl", "coco", "conversations"],
                   help="format of the prompt files (%(default)s: read from the content)")
    p.add_argument("--image-root", type=Path, default=None,
                   help="folder that relative image paths are in (default: the prompt "
                   "file's folder)")
    p.add_argument("--long-answers", action="store_true",
                   help="end each question with \"Please answer with at least 1000 words.\","
                   " as ViSpec's data generation does (raise --max-tokens and "
                   "--max-model-len to match; ViSpec answers up to 1024 tokens)")
    p.add_argument("--min-pixels", type=int, default=None,
                   help="Qwen-VL targets: smallest picture area after resizing (default: "
                   "ViSpec's 256*28*28 for Qwen2.5-VL, the processor's own for Qwen3-VL); "
                   "no effect for LLaVA")
    p.add_argument("--max-pixels", type=int, default=None,
                   help="Qwen-VL targets: largest picture area after resizing (default: "
                   "ViSpec's 1280*28*28 for Qwen2.5-VL, the processor's own for Qwen3-VL); "
                   "no effect for LLaVA")
    p.add_argument("--max-model-len", type=int, default=1024,
                   help="vLLM context for prompt and answer (%(default)s)")
    p.add_argument("--kv-cache-gib", type=float, default=1.0,
                   help="vLLM KV cache size in GiB (%(default)s)")


def data_settings(args) -> dict:
    """What a data folder's samples depend on: ``recipe`` reuses a folder only if equal."""
    from .prompts import is_entry
    source = args.prompts if is_entry(args.prompts) else str(Path(args.prompts).resolve())
    return {"prompts": source, "prompts_format": args.prompts_format,
            "image_root": None if args.image_root is None else str(args.image_root.resolve()),
            "num_prompts": args.num_prompts, "text_only": args.text_only,
            "long_answers": args.long_answers, "min_pixels": args.min_pixels,
            "max_pixels": args.max_pixels, "max_tokens": args.max_tokens,
            "max_model_len": args.max_model_len, "seed": args.seed}


def run_data(args) -> None:
    from .data import build_dataset
    from .pixel_limits import QWEN3_VL_TYPES, pixel_limits_for, processor_pixel_range
    from .prompts import is_entry, open_prompts
    if args.max_tokens >= args.max_model_len:
        raise SystemExit(f"vispec-train data: --max-tokens {args.max_tokens} leaves no room "
                         f"for the prompt in --max-model-len {args.max_model_len}")
    target_cfg = json.loads((args.target / "config.json").read_text())
    given = args.min_pixels is not None or args.max_pixels is not None
    # Qwen3-VL: a limit not given stays the processor's (HF's call needs both edges).
    own = processor_pixel_range(args.target) \
        if given and target_cfg.get("model_type") in QWEN3_VL_TYPES else None
    try:
        pixels = pixel_limits_for(target_cfg, args.min_pixels, args.max_pixels,
                                  processor_range=own)
    except ValueError as e:
        raise SystemExit(f"vispec-train data: {e}") from None
    if pixels is None and given:
        print(f"[vispec-train] --min-pixels/--max-pixels ignored: a "
              f"{target_cfg.get('model_type')} target resizes pictures to a fixed size")
    count = args.num_prompts
    if count is None and is_entry(args.prompts):
        count = DEMO_COUNTS["data"]
    prompts = open_prompts(args.prompts, count, args.seed, images=not args.text_only,
                           fmt=args.prompts_format, image_root=args.image_root,
                           long_answers=args.long_answers)
    print(f"[vispec-train] {len(prompts)} prompts from {args.prompts}"
          + (f", pictures {pixels.min_pixels}..{pixels.max_pixels} pixels" if pixels else ""))
    (args.out / COMPLETE).unlink(missing_ok=True)
    paths = build_dataset(args.target, prompts, args.max_tokens, args.out,
                          max_model_len=args.max_model_len, kv_cache_gib=args.kv_cache_gib,
                          pixels=pixels)
    (args.out / SETTINGS).write_text(json.dumps(data_settings(args), indent=2))
    (args.out / COMPLETE).write_text(f"{len(paths)}\n")
    print(f"[vispec-train] wrote {len(paths)} samples to {args.out}")
