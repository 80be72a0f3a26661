"""The image-token benchmark's naming and report: demo-N shorthands, pictures drawn at the
target's size, and the cross-size table and plot made from sweep results."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from common import demo_picture_size, is_demo, series_tokens  # noqa: E402
from datasets_local import load_prompts  # noqa: E402
from image_tokens import plot, summarize, table  # noqa: E402


def test_series_shorthands():
    assert series_tokens("demo-576") == 576 and series_tokens("demo") is None
    assert series_tokens("/models/demo-target") is None
    assert is_demo("demo-36") and is_demo("demo") and not is_demo("tiny:llava")
    with pytest.raises(SystemExit, match="demo-36, demo-144 or demo-576"):
        series_tokens("demo-big")


def test_pictures_are_drawn_at_the_targets_crop_size(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(
        {"crop_size": {"height": 336, "width": 336}}))
    assert demo_picture_size(str(tmp_path)) == 336
    assert demo_picture_size(str(tmp_path / "elsewhere")) == 84
    # What a series target's processor writes (transformers' current file layout).
    from vllm_vispec.tiny.demo_target import make_processor
    from vllm_vispec.tiny.targets import LLAVA_CHAT_TEMPLATE, LLAVA_SPECIALS
    from vllm_vispec.tiny.tokenizer import train_tokenizer, wrap
    tokenizer = wrap(train_tokenizer(LLAVA_SPECIALS, 128, corpus=["a red circle"]),
                     LLAVA_CHAT_TEMPLATE, unk_token="<unk>", bos_token="<s>",
                     eos_token="</s>", pad_token="<pad>")
    make_processor(tokenizer, 168).save_pretrained(tmp_path / "saved")
    assert demo_picture_size(str(tmp_path / "saved")) == 168
    (_, images), = load_prompts("demo", 1, 5, image_size=336)
    assert images[0].size == (336, 336)


def _sweep(speedups: dict[str, float], acceptance: dict[str, float]) -> dict:
    results = []
    for method in ("none", "ngram", "eagle=demo-144", "vispec=demo-144"):
        name = method.split("=")[0]
        levels = [{"concurrency": c, "acceptance_length": acceptance.get(name),
                   "accepted_per_position": [0.9, 0.8, 0.7] if name != "none" else [],
                   "output_tokens_per_s": 100.0 * speedups.get(name, 1.0) * c,
                   "speedup_vs_no_speculation": speedups.get(name, 1.0),
                   "matches_no_speculation": True} for c in (1, 8)]
        results.append({"method": method, "num_speculative_tokens": 0 if name == "none" else 3,
                        "levels": levels})
    return {"results": results}


def test_table_and_plot_across_sizes(tmp_path):
    series = [summarize(t, {"item_recall": r}, _sweep({"vispec": s, "eagle": 1.2},
                                                      {"vispec": a, "eagle": 3.0}))
              for t, r, s, a in ((36, 1.0, 1.5, 3.5), (144, 0.95, 1.4, 3.4))]
    assert series[1]["methods"]["vispec"]["8"]["speedup_vs_no_speculation"] == 1.4
    text = table(series, [1, 8])
    rows = [line for line in text.splitlines() if line.startswith("| 144 ")]
    assert [row.split(" | ")[2] for row in rows] == ["none", "vispec", "eagle", "ngram"]
    vispec = rows[1].split(" | ")
    assert vispec[1] == "0.95" and vispec[3] == "3.40" and vispec[4] == "0.90 0.80 0.70"
    assert vispec[6] == "1.40×" and vispec[-1].strip(" |") == "yes"
    plot(series, [1, 8], tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 10_000


def test_multi_picture_prompts_hold_two_to_four_pictures():
    prompts = load_prompts("demo-multi", 12, 0, image_size=168)
    counts = {len(images) for _, images in prompts}
    assert counts == {2, 3, 4}
    for messages, images in prompts:
        parts = messages[0]["content"]
        assert [p["type"] for p in parts] == ["image_url"] * len(images) + ["text"]
        assert all(img.size == (168, 168) for img in images)
