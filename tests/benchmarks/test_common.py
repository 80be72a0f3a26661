"""Benchmark helpers: counter deltas, statistics, prompt sets, method names."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from common import acceptance, parse_method, summary  # noqa: E402
from datasets_local import load_prompts  # noqa: E402


def test_acceptance_is_vllms_definition_between_snapshots():
    before = {"num_drafts": 10, "num_draft_tokens": 30, "num_accepted_tokens": 12,
              "accepted_per_position": [6, 4, 2]}
    after = {"num_drafts": 30, "num_draft_tokens": 90, "num_accepted_tokens": 52,
             "accepted_per_position": [24, 16, 12]}
    got = acceptance(before, after)
    assert got["drafts"] == 20 and got["accepted_tokens"] == 40
    assert got["acceptance_length"] == pytest.approx(3.0)  # 1 + 40 / 20: bonus included
    assert got["accepted_per_position"] == pytest.approx([0.9, 0.6, 0.5])
    none = acceptance(after, after)
    assert none["acceptance_length"] is None and none["accepted_per_position"] == []


def test_summary_median_and_p99():
    got = summary([float(x) for x in range(1, 101)])
    assert got["median"] == 50.5 and got["p99"] == 99.0 and got["mean"] == 50.5
    assert summary([])["median"] is None


@pytest.mark.parametrize("method,expected", [
    ("none", ("none", None)), ("ngram", ("ngram", None)),
    ("vispec=demo", ("vispec", "demo")), ("eagle=/d", ("eagle", "/d"))])
def test_methods_parse(method, expected):
    assert parse_method(method) == expected


@pytest.mark.parametrize("bad", ["vispec", "eagle3=x", "ngram=x", "tree"])
def test_bad_methods_are_refused(bad):
    with pytest.raises(SystemExit, match="unknown method"):
        parse_method(bad)


def test_jsonl_and_coco_prompt_files(tmp_path):
    for i in range(3):
        Image.new("RGB", (20, 10), (i * 80, 0, 0)).save(tmp_path / f"p{i}.png")
    (tmp_path / "set.jsonl").write_text("\n".join(
        json.dumps({"image": f"p{i}.png", "question": f"q{i}"}) for i in range(3)))
    prompts = load_prompts(str(tmp_path / "set.jsonl"), 2, seed=0)
    assert len(prompts) == 2
    messages, images = prompts[0]
    assert images[0].size == (20, 10)
    assert messages[0]["content"][1]["text"] in {"q0", "q1", "q2"}
    (tmp_path / "coco.json").write_text(json.dumps(
        {"images": [{"id": 1, "file_name": "p1.png"}], "annotations": []}))
    (messages, _), = load_prompts(str(tmp_path / "coco.json"), 5, seed=0)
    assert messages[0]["content"][1]["text"] == "Describe the image."
    with pytest.raises(SystemExit, match="use demo, demo-multi or an existing"):
        load_prompts(str(tmp_path / "missing.jsonl"), 1, seed=0)


def test_qwen_targets_get_the_pixel_limits_the_drafts_were_trained_on(tmp_path):
    from common import QWEN_PIXEL_LIMITS, mm_processor_kwargs
    assert QWEN_PIXEL_LIMITS == {"min_pixels": 200704, "max_pixels": 1003520}
    hub = "Qwen/Qwen2.5-VL-7B-Instruct"
    assert mm_processor_kwargs(hub, hub) == QWEN_PIXEL_LIMITS
    local = tmp_path / "qwen"
    local.mkdir()
    (local / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}))
    assert mm_processor_kwargs(str(local), str(local)) == QWEN_PIXEL_LIMITS
    llava = "llava-hf/llava-v1.6-vicuna-7b-hf"
    assert mm_processor_kwargs(llava, llava) == {}
    # The local shorthands keep their small pictures; the setting can say otherwise.
    assert mm_processor_kwargs("tiny:qwen2_5_vl", str(local)) == {}
    assert mm_processor_kwargs(hub, hub, "none") == {}
    assert mm_processor_kwargs(hub, hub, '{"max_pixels": 50176}') == {"max_pixels": 50176}
    with pytest.raises(SystemExit, match="JSON object"):
        mm_processor_kwargs(hub, hub, "[1]")
