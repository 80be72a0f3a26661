"""Draft training on a Qwen3-VL target, end to end at the smallest budget: ``vispec-train
recipe`` on the tiny Qwen3-VL (vLLM's answers, HF's features, both stages, export), with
pixel limits that vLLM and the recorded features both resize into (32-pixel tokens); the
export loads strictly with the target's head_dim and serves losslessly against plain vLLM."""

from __future__ import annotations

import json
import os
from pathlib import Path

from PIL import Image, ImageDraw
from prompts import conversations
from vllm_runs import greedy_chat, offline_llm, spec_counters

from vllm_vispec.model.checkpoint import read_draft
from vllm_vispec.tiny import tiny_target
from vllm_vispec.train.cli import main as vispec_train
from vllm_vispec.train.data import load_dataset

TOKEN = 32  # Qwen3-VL: 16-pixel patches merged 2 x 2


def prompt_file(folder: Path) -> Path:
    """Two one-picture prompts, a two-picture prompt and a text-only one."""
    (folder / "pics").mkdir(parents=True)
    for i, fill in enumerate(("red", "green", "blue")):
        img = Image.new("RGB", (40, 30), "white")
        ImageDraw.Draw(img).rectangle((4 + 8 * i, 4, 20 + 8 * i, 24), fill=fill)
        img.save(folder / "pics" / f"{fill}.png")
    rows = [{"image": "pics/red.png", "question": "What is here?"},
            {"image": "pics/green.png", "question": "Which colour?"},
            {"images": ["pics/blue.png", "pics/red.png"], "question": "Compare them."},
            {"question": "Name a colour."}]
    path = folder / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_recipe_on_qwen3_vl_exports_a_draft_that_serves_losslessly(tmp_path, baseline):
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    target = tiny_target("qwen3_vl")
    text = json.loads((target / "config.json").read_text())["text_config"]
    low, high = 20 * TOKEN * TOKEN, 30 * TOKEN * TOKEN  # the tiny target's own: 4..16 tokens
    out = tmp_path / "run"
    assert vispec_train(["recipe", "--target", str(target), "--out", str(out),
                         "--prompts", str(prompt_file(tmp_path)), "--arch", "vispec",
                         "--max-tokens", "8", "--epochs", "1",
                         "--min-pixels", str(low), "--max-pixels", str(high)]) == 0

    # HF's forward refuses features that do not match vLLM's image tokens, so each run is
    # the count both resized to
    height, width = smart_resize(30, 40, factor=TOKEN, min_pixels=low, max_pixels=high)
    tokens = height * width // (TOKEN * TOKEN)
    assert 20 <= tokens <= 30
    runs = [[s.end - s.start for s in x.images] for x in load_dataset(out / "data-image")]
    assert runs == [[tokens], [tokens], [tokens, tokens], []]
    for stage in ("vispec-stage1", "vispec"):
        report = json.loads((out / stage / "report.json").read_text())
        assert report["train_samples"] + report["held_out_samples"] == 4

    draft = out / "vispec" / "draft"
    dims, _ = read_draft(draft)  # strict: exactly the published keys and shapes
    # the target's head_dim (64), not hidden / heads (32); multi-head attention
    assert text["head_dim"] != text["hidden_size"] // text["num_attention_heads"]
    assert (dims.hidden_size, dims.num_heads, dims.head_dim, dims.num_kv_heads) == (
        text["hidden_size"], text["num_attention_heads"], text["head_dim"],
        text["num_attention_heads"])

    spec = {"method": "vispec", "model": str(draft), "num_speculative_tokens": 2}
    with offline_llm("qwen3_vl", spec) as llm:
        got = greedy_chat(llm, conversations())
        counters = spec_counters(llm)
    expected = baseline("qwen3_vl")  # vLLM without speculation and without the plugin
    assert {k: v[0] for k, v in got.items()} == {k: v[0] for k, v in expected.items()}
    assert counters["num_draft_tokens"] > 0
