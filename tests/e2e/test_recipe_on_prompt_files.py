"""Training on a user's own prompt file: ``vispec-train recipe --prompts FILE`` (tiny LLaVA)
answers the file's prompts, records one sample per prompt with its pictures where the
file put them, trains and exports a draft that loads strictly; on Qwen2.5-VL the pixel
limits decide the image tokens in both vLLM and the recorded features."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from vllm_vispec.model.checkpoint import read_draft
from vllm_vispec.tiny import tiny_target
from vllm_vispec.train.cli import main as vispec_train
from vllm_vispec.train.data import load_dataset


def prompt_file(folder: Path) -> Path:
    """Three small pictures and a text-only question, one per line."""
    (folder / "pics").mkdir(parents=True)
    rows = []
    for i, fill in enumerate(("red", "green", "blue")):
        img = Image.new("RGB", (40, 30), "white")
        ImageDraw.Draw(img).rectangle((4 + 8 * i, 4, 20 + 8 * i, 24), fill=fill)
        img.save(folder / "pics" / f"{fill}.png")
        rows.append({"image": f"pics/{fill}.png", "question": f"What is shape {i}?"})
    rows.append({"question": "Name a colour."})
    path = folder / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def image_runs(data: Path) -> list[list[int]]:
    """The image-token run lengths of each sample, in prompt order."""
    return [[s.end - s.start for s in sample.images] for sample in load_dataset(data)]


def test_recipe_on_a_prompt_file_exports_a_draft_that_loads_strictly(tmp_path):
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    target = tiny_target("llava")
    image_tokens = json.loads((target / "config.json").read_text())["image_seq_length"]
    out = tmp_path / "run"
    args = ["recipe", "--target", str(target), "--out", str(out),
            "--prompts", str(prompt_file(tmp_path)), "--long-answers", "--arch", "vispec",
            "--max-tokens", "12", "--epochs", "2"]
    assert vispec_train(args) == 0
    dims, _ = read_draft(out / "vispec" / "draft")  # strict: the published keys and shapes
    assert dims.num_q == 2 and dims.hidden_size == 256
    # stage 2: the file's pictures, one per prompt that has one; stage 1: none
    assert image_runs(out / "data-image") == [[image_tokens]] * 3 + [[]]
    assert image_runs(out / "data-text") == [[]] * 4
    settings = json.loads((out / "data-image" / "settings.json").read_text())
    assert settings["prompts"] == str((tmp_path / "prompts.jsonl").resolve())
    assert settings["long_answers"]
    for stage in ("vispec-stage1", "vispec"):
        report = json.loads((out / stage / "report.json").read_text())
        assert report["train_samples"] + report["held_out_samples"] == 4
        assert len(report["history"]) == 2
    # the answers are the target's: every sample goes past its prompt
    assert all(len(s.token_ids) > s.answer_start for s in load_dataset(out / "data-image"))


def test_qwen_pixel_limits_set_the_image_tokens_of_answers_and_features(tmp_path):
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    target = tiny_target("qwen2_5_vl")
    low, high = 20 * 28 * 28, 30 * 28 * 28  # the tiny target's own range is 4..16 tokens
    assert vispec_train(["data", "--target", str(target), "--out", str(tmp_path / "data"),
                         "--prompts", str(prompt_file(tmp_path)), "--max-tokens", "4",
                         "--min-pixels", str(low), "--max-pixels", str(high)]) == 0
    height, width = smart_resize(30, 40, factor=28, min_pixels=low, max_pixels=high)
    tokens = height * width // (28 * 28)
    assert 20 <= tokens <= 30
    # HF's forward refuses features that do not match vLLM's image tokens, so each run
    # here is the count both agreed on
    assert image_runs(tmp_path / "data") == [[tokens]] * 3 + [[]]
    assert all(torch.isfinite(x.hidden).all() for x in load_dataset(tmp_path / "data"))
