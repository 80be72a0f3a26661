"""Training data the target generates: it answers prompts (through vLLM, batched, greedy),
then its features are recorded by teacher forcing, so the draft learns the target's own
distribution."""

from __future__ import annotations

import random
from pathlib import Path

import torch
from tqdm import tqdm

from ..tiny.images import image_part, shapes_image
from .target_features import Sample, make_sample

QUESTIONS = ["Describe the image.", "What is in the picture?", "Describe the shapes.",
             "Where are the shapes?", "How many shapes are there?", "What colors are there?"]


def demo_prompts(count: int, seed: int = 0, images: bool = True) -> list[tuple[list, list]]:
    """Prompts in the demo domain: (chat messages, PIL images). Text-only for stage 1."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        question = rng.choice(QUESTIONS)
        if not images:
            out.append(([{"role": "user", "content": question}], []))
            continue
        img = shapes_image(seed * 100_003 + i, (rng.choice([64, 96]), rng.choice([64, 96])))
        out.append(([{"role": "user", "content": [image_part(img),
                                                   {"type": "text", "text": question}]}],
                    [img]))
    return out


def generate(target: Path, prompts: list[tuple[list, list]], max_tokens: int,
             max_model_len: int = 1024) -> list[tuple[list[int], list[int]]]:
    """The target's greedy answers through vLLM: (prompt ids, answer ids) per prompt."""
    from vllm import LLM, SamplingParams
    llm = LLM(model=str(target), dtype="float32", max_model_len=max_model_len,
              enforce_eager=True, limit_mm_per_prompt={"image": 2}, seed=0)
    outs = llm.chat([m for m, _ in prompts],
                    SamplingParams(temperature=0.0, max_tokens=max_tokens))
    del llm
    return [(list(o.prompt_token_ids), list(o.outputs[0].token_ids)) for o in outs]


def build_dataset(target: Path, prompts: list[tuple[list, list]], max_tokens: int,
                  out_dir: Path) -> list[Path]:
    """Generates answers, records features, writes one file per sample."""
    out_dir.mkdir(parents=True, exist_ok=True)
    answers = generate(target, prompts, max_tokens)
    paths = []
    for i, ((_, images), (prompt_ids, answer_ids)) in enumerate(
            tqdm(list(zip(prompts, answers)), desc="target features")):
        sample = make_sample(target, prompt_ids, answer_ids, images)
        path = out_dir / f"sample_{i:06d}.pt"
        torch.save(sample.to_dict(), path)
        paths.append(path)
    return paths


def load_dataset(data_dir: Path) -> list[Sample]:
    files = sorted(data_dir.glob("sample_*.pt"))
    if not files:
        raise FileNotFoundError(f"no training samples (sample_*.pt) in {data_dir}")
    return [Sample.from_dict(torch.load(f, weights_only=False)) for f in files]

