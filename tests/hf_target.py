"""The tiny targets run through HF transformers: the features the reference draft consumes."""

from __future__ import annotations

import json
from functools import lru_cache

import torch

from vllm_vispec.tiny import tiny_target


@lru_cache(maxsize=2)
def load_target(kind: str):
    from transformers import AutoModelForImageTextToText, AutoProcessor
    path = tiny_target(kind)
    model, info = AutoModelForImageTextToText.from_pretrained(
        path, dtype=torch.float32, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    return model.eval(), AutoProcessor.from_pretrained(path)


def image_token_id(kind: str) -> int:
    cfg = json.loads((tiny_target(kind) / "config.json").read_text())
    return cfg.get("image_token_index", cfg.get("image_token_id"))


@torch.no_grad()
def target_features(kind: str, token_ids: list[int], images: list):
    """(input embeddings with images merged [T, H], post-norm last hidden states [T, H],
    lm_head weight, embedding weight) for one token sequence."""
    model, processor = load_target(kind)
    kwargs = {}
    if images:
        kwargs = dict(processor.image_processor(images=images, return_tensors="pt"))
    out = model(input_ids=torch.tensor([token_ids]), output_hidden_states=True, **kwargs)
    embeds, hidden = out.hidden_states[0][0], out.hidden_states[-1][0]
    lm_head = model.get_output_embeddings().weight
    # The draft consumes post-norm features: the ones lm_head scores.
    torch.testing.assert_close(out.logits[0], hidden @ lm_head.T, rtol=1e-4, atol=1e-4)
    return embeds, hidden, lm_head, model.get_input_embeddings().weight


def image_spans(kind: str, token_ids: list[int]):
    from vllm_vispec.reference import ImageSpan
    image = image_token_id(kind)
    spans, start = [], None
    for i, tok in enumerate(token_ids + [-1]):
        if tok == image and start is None:
            start = i
        elif tok != image and start is not None:
            spans.append(ImageSpan(start, i))
            start = None
    return spans
