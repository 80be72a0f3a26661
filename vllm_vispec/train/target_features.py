"""What the draft trains on, from the target run through HF transformers (teacher forcing):
its input embeddings with images merged and its post-norm last hidden states."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from ..reference import ImageSpan


@dataclass
class Sample:
    token_ids: list[int]
    embeds: torch.Tensor  # [L, H] input embeddings, image features merged
    hidden: torch.Tensor  # [L, H] post-norm last hidden states
    images: list[ImageSpan]
    answer_start: int  # first generated token

    def to_dict(self) -> dict:
        return dict(token_ids=self.token_ids, embeds=self.embeds, hidden=self.hidden,
                    images=[(s.start, s.end) for s in self.images],
                    answer_start=self.answer_start)

    def to(self, device: torch.device) -> Sample:
        if self.hidden.device == device:
            return self
        return Sample(self.token_ids, self.embeds.to(device), self.hidden.to(device),
                      self.images, self.answer_start)

    @classmethod
    def from_dict(cls, d: dict) -> Sample:
        return cls(d["token_ids"], d["embeds"], d["hidden"],
                   [ImageSpan(a, b) for a, b in d["images"]], d["answer_start"])


@lru_cache(maxsize=2)
def load_target(path: str):
    from transformers import AutoModelForImageTextToText, AutoProcessor
    model, info = AutoModelForImageTextToText.from_pretrained(
        path, dtype=torch.float32, output_loading_info=True)
    if info["missing_keys"] or info["unexpected_keys"]:
        raise ValueError(f"target {path} did not load cleanly: {info}")
    return model.eval(), AutoProcessor.from_pretrained(path)


def image_token_id(path: str | Path) -> int:
    cfg = json.loads((Path(path) / "config.json").read_text())
    return cfg.get("image_token_index", cfg.get("image_token_id"))


def image_spans(token_ids: list[int], image_token: int) -> list[ImageSpan]:
    spans, start = [], None
    for i, tok in enumerate([*token_ids, -1]):
        if tok == image_token and start is None:
            start = i
        elif tok != image_token and start is not None:
            spans.append(ImageSpan(start, i))
            start = None
    return spans


@torch.no_grad()
def target_features(path: str | Path, token_ids: list[int], images: list,
                    image_kwargs: dict | None = None):
    """(input embeddings [L, H], post-norm hidden [L, H], lm_head [V, H], embedding [V, H]).

    ``image_kwargs`` go to the image processor: the sizes vLLM resized the pictures to."""
    model, processor = load_target(str(path))
    kwargs = dict(processor.image_processor(images=images, return_tensors="pt",
                                            **(image_kwargs or {}))) if images else {}
    if images and "mm_token_type_ids" in processor.model_input_names:
        # Qwen3-VL's M-RoPE reads each token's modality from it (the processor's call
        # makes it from the text; here the tokens are given).
        kwargs["mm_token_type_ids"] = torch.tensor(
            processor.create_mm_token_type_ids([token_ids]))
    out = model(input_ids=torch.tensor([token_ids]), output_hidden_states=True, **kwargs)
    embeds, hidden = out.hidden_states[0][0], out.hidden_states[-1][0]
    lm_head = model.get_output_embeddings().weight
    # The draft consumes post-norm features: the ones lm_head scores.
    torch.testing.assert_close(out.logits[0], hidden @ lm_head.T, rtol=1e-4, atol=1e-4)
    return embeds, hidden, lm_head, model.get_input_embeddings().weight


def make_sample(path: str | Path, prompt_ids: list[int], answer_ids: list[int],
                images: list, image_kwargs: dict | None = None) -> Sample:
    token_ids = list(prompt_ids) + list(answer_ids)
    embeds, hidden, _, _ = target_features(path, token_ids, images, image_kwargs)
    return Sample(token_ids, embeds.clone(), hidden.clone(),
                  image_spans(token_ids, image_token_id(path)), len(prompt_ids))
