"""Training data the target generates: it answers prompts (through vLLM, batched, greedy),
then its features are recorded by teacher forcing, so the draft learns the target's own
distribution."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from ..tiny import scenes
from ..tiny.images import image_part
from .target_features import Sample, make_sample

TEXT_QUESTIONS = ["Describe a picture of shapes.", "What shapes could a picture show?",
                  "Name some colors.", "Where can a shape be in a picture?"]


def demo_prompts(count: int, seed: int = 0, images: bool = True,
                 image_size: int = 84) -> list[tuple[list, list]]:
    """Prompts in the demo domain (``vllm_vispec.tiny.scenes``): (chat messages, PIL
    images), one picture of coloured shapes each; text-only (stage 1) without images."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        if not images:
            question = rng.choice(TEXT_QUESTIONS)
            out.append(([{"role": "user", "content": question}], []))
            continue
        img = scenes.draw(scenes.random_scene(rng), image_size)
        content = [image_part(img), {"type": "text", "text": rng.choice(scenes.QUESTIONS)}]
        out.append(([{"role": "user", "content": content}], [img]))
    return out


def generate(target: Path, prompts: list[tuple[list, list]], max_tokens: int,
             max_model_len: int = 1024) -> list[tuple[list[int], list[int]]]:
    """The target's greedy answers through vLLM: (prompt ids, answer ids) per prompt."""
    from vllm import LLM, SamplingParams
    # A fixed, modest KV cache: on the CPU backend vLLM otherwise reserves 92% of the
    # NUMA node's memory and refuses to start when a training run holds some of it.
    llm = LLM(model=str(target), dtype="float32", max_model_len=max_model_len,
              enforce_eager=True, limit_mm_per_prompt={"image": 2}, seed=0,
              gpu_memory_utilization=0.5, kv_cache_memory_bytes=1 << 30)
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


class SampleFiles(Sequence):
    """The samples of a data folder, each read from disk the first time it is used: a
    training process reads only the samples its shares of the batches hold."""

    def __init__(self, files: list[Path]) -> None:
        self.files = files
        self._loaded: dict[Path, Sample] = {}

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return SampleFiles(self.files[index])
        path = self.files[index]
        if path not in self._loaded:
            self._loaded[path] = Sample.from_dict(torch.load(path, weights_only=False))
        return self._loaded[path]

    @property
    def num_loaded(self) -> int:
        return len(self._loaded)


def load_dataset(data_dir: Path) -> SampleFiles:
    files = sorted(data_dir.glob("sample_*.pt"))
    if not files:
        raise FileNotFoundError(f"no training samples (sample_*.pt) in {data_dir}")
    return SampleFiles(files)

