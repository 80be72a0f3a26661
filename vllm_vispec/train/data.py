"""Training data the target generates: it answers prompts (through vLLM, batched, greedy),
then its features are recorded by teacher forcing, so the draft learns the target's own
distribution.

Prompts are (chat messages, PIL images) pairs from any sequence: a user's prompt file
(``prompts.PromptFile``, pictures read as used), or a list made by a function.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from .pixel_limits import PixelLimits
from .prompts import PromptFile
from .target_features import Sample, make_sample

# Prompts handed to vLLM per call: their pictures are in memory together.
PROMPTS_PER_CALL = 256


def max_images(prompts: Sequence) -> int:
    if isinstance(prompts, PromptFile):
        return prompts.max_images
    return max((len(images) for _, images in prompts), default=0)


def labelled_bar(label: str):
    """A tqdm factory for vLLM's progress bars that says which prompts they count."""
    def bar(*args, desc: str = "", **kwargs):
        return tqdm(*args, desc=f"{label} {desc}".strip(), **kwargs)
    return bar


def generate(target: Path, prompts: Sequence, max_tokens: int, max_model_len: int = 1024,
             *, kv_cache_gib: float = 1.0,
             pixels: PixelLimits | None = None) -> list[tuple[list[int], list[int]]]:
    """The target's greedy answers through vLLM: (prompt ids, answer ids) per prompt,
    ``PROMPTS_PER_CALL`` prompts at a time."""
    from vllm import LLM, SamplingParams
    # A fixed KV cache (1 GiB unless set): on the CPU backend vLLM otherwise reserves 92%
    # of the NUMA node's memory and refuses to start when a training run holds some of it.
    llm = LLM(model=str(target), dtype="float32", max_model_len=max_model_len,
              enforce_eager=True, limit_mm_per_prompt={"image": max(1, max_images(prompts))},
              seed=0, gpu_memory_utilization=0.5,
              kv_cache_memory_bytes=int(kv_cache_gib * (1 << 30)),
              mm_processor_kwargs=pixels.vllm_kwargs() if pixels else None)
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    answers = []
    for start in range(0, len(prompts), PROMPTS_PER_CALL):
        end = min(start + PROMPTS_PER_CALL, len(prompts))
        messages = [prompts[i][0] for i in range(start, end)]
        outs = llm.chat(messages, params,
                        use_tqdm=labelled_bar(f"target answers {start + 1}-{end}/{len(prompts)}"))
        answers += [(list(o.prompt_token_ids), list(o.outputs[0].token_ids)) for o in outs]
    del llm
    return answers


def build_dataset(target: Path, prompts: Sequence, max_tokens: int, out_dir: Path, *,
                  max_model_len: int = 1024, kv_cache_gib: float = 1.0,
                  pixels: PixelLimits | None = None) -> list[Path]:
    """Generates answers, records features, writes one file per sample (replacing an
    earlier run's samples in ``out_dir``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("sample_*.pt"):
        old.unlink()
    answers = generate(target, prompts, max_tokens, max_model_len, kv_cache_gib=kv_cache_gib,
                       pixels=pixels)
    image_kwargs = pixels.hf_kwargs() if pixels else None
    paths = []
    for i in tqdm(range(len(prompts)), desc="target features", unit="sample"):
        _, images = prompts[i]
        prompt_ids, answer_ids = answers[i]
        sample = make_sample(target, prompt_ids, answer_ids, images, image_kwargs)
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

