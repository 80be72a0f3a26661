"""Qwen3-VL picture sizes in ``vispec-train data``: the processor's own range by default
(ViSpec's Qwen2.5-VL range is not Qwen3-VL's), given limits applied with the edge not given
taken from the processor, and HF resizing into them in 32-pixel tokens."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from vllm_vispec.train.cli import main as vispec_train
from vllm_vispec.train.pixel_limits import (VISPEC_MAX_PIXELS, VISPEC_MIN_PIXELS,
                                            pixel_limits_for, processor_pixel_range)

TOKEN = 32  # Qwen3-VL: 16-pixel patches merged 2 x 2
OWN = {"shortest_edge": 64 * TOKEN * TOKEN, "longest_edge": 16384 * TOKEN * TOKEN}


def qwen3_target(folder: Path, model_type: str = "qwen3_vl") -> Path:
    """A target folder with Qwen3-VL's config type and its published flat
    preprocessor_config.json (64 to 16384 tokens)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "Qwen2VLImageProcessor", "size": OWN, "patch_size": 16,
        "merge_size": 2, "temporal_patch_size": 2}))
    return folder


def test_qwen3_vl_keeps_its_processors_range_unless_given():
    for family in ("qwen3_vl", "qwen3_vl_moe"):
        cfg = {"model_type": family}
        assert pixel_limits_for(cfg) is None  # not ViSpec's 28-pixel Qwen2.5-VL range
        assert pixel_limits_for(cfg, 100 * 1024, 200 * 1024,
                                processor_range=OWN).vllm_kwargs() == {
            "min_pixels": 100 * 1024, "max_pixels": 200 * 1024}
        low = pixel_limits_for(cfg, min_pixels=100 * 1024, processor_range=OWN)
        assert (low.min_pixels, low.max_pixels) == (100 * 1024, OWN["longest_edge"])
        high = pixel_limits_for(cfg, max_pixels=100 * 1024, processor_range=OWN)
        assert (high.min_pixels, high.max_pixels) == (OWN["shortest_edge"], 100 * 1024)
        with pytest.raises(ValueError, match="0 < min-pixels <= max-pixels"):
            pixel_limits_for(cfg, max_pixels=1024, processor_range=OWN)  # below the min
        with pytest.raises(ValueError, match="processor's range"):
            pixel_limits_for(cfg, min_pixels=1024)
    qwen25 = pixel_limits_for({"model_type": "qwen2_5_vl"})  # unchanged: ViSpec's
    assert (qwen25.min_pixels, qwen25.max_pixels) == (VISPEC_MIN_PIXELS, VISPEC_MAX_PIXELS)


def test_processor_range_is_read_from_both_config_layouts(tmp_path):
    from vllm_vispec.tiny import tiny_target
    assert processor_pixel_range(qwen3_target(tmp_path / "flat")) == OWN
    # the tiny target saves a nested processor_config.json: 4 to 16 tokens
    assert processor_pixel_range(tiny_target("qwen3_vl")) == {
        "shortest_edge": 4 * TOKEN * TOKEN, "longest_edge": 16 * TOKEN * TOKEN}


def test_hf_resizes_qwen3_vl_pictures_into_the_limits_in_32_pixel_tokens(tmp_path):
    from transformers import AutoImageProcessor
    processor = AutoImageProcessor.from_pretrained(str(qwen3_target(tmp_path / "t")))
    img = Image.new("RGB", (300, 200), (10, 20, 30))
    limits = pixel_limits_for({"model_type": "qwen3_vl"}, 8 * TOKEN * TOKEN,
                              16 * TOKEN * TOKEN, processor_range=OWN)

    def tokens(**kwargs) -> int:
        grid = processor(images=[img], return_tensors="pt", **kwargs)["image_grid_thw"]
        return int(grid.prod()) // 4  # 2x2 patches merge into one image token

    assert 8 <= tokens(**limits.hf_kwargs()) <= 16
    assert tokens() >= 64  # the processor's own range


@pytest.mark.parametrize("flags, expected", [
    ([], None),
    (["--min-pixels", str(100 * 1024)], (100 * 1024, OWN["longest_edge"])),
    (["--min-pixels", str(8 * 1024), "--max-pixels", str(16 * 1024)], (8 * 1024, 16 * 1024)),
])
def test_data_hands_qwen3_vl_limits_to_vllm_and_hf(tmp_path, monkeypatch, capsys, flags,
                                                   expected):
    """Before, a Qwen3-VL target's limits were dropped ("resizes pictures to a fixed
    size")."""
    import vllm_vispec.train.data as data
    seen = []

    def build_dataset(target, prompts, max_tokens, out_dir, *, pixels=None, **kwargs):
        seen.append(pixels)  # what vLLM and the HF features would be given
        out_dir.mkdir(parents=True)
        return []

    monkeypatch.setattr(data, "build_dataset", build_dataset)
    prompts = tmp_path / "set.jsonl"
    prompts.write_text(json.dumps({"question": "Q"}) + "\n")
    assert vispec_train(["data", "--target", str(qwen3_target(tmp_path / "t")), "--prompts",
                         str(prompts), "--out", str(tmp_path / "out"), *flags]) == 0
    got = None if seen[0] is None else (seen[0].min_pixels, seen[0].max_pixels)
    assert got == expected
    assert "ignored" not in capsys.readouterr().out


def test_data_refuses_qwen3_vl_limits_outside_the_processors_range(tmp_path):
    prompts = tmp_path / "set.jsonl"
    prompts.write_text(json.dumps({"question": "Q"}) + "\n")
    with pytest.raises(SystemExit, match=r"min-pixels <= max-pixels \(got 65536, 1024\)"):
        vispec_train(["data", "--target", str(qwen3_target(tmp_path / "t")), "--prompts",
                      str(prompts), "--out", str(tmp_path / "out"), "--max-pixels", "1024"])
