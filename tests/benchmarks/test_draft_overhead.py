"""The draft-overhead benchmark's options, per-step summaries and table, on fake results
(no engine); the image-token layouts it builds targets for."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from draft_overhead import (DEFAULT_OUT, QUICK, parse_args, ratios, summarise,  # noqa: E402
                            table, write)
from tiny_models import image_layout  # noqa: E402


def test_defaults_and_quick_mode():
    args = parse_args([])
    assert (args.target, args.num_speculative_tokens, args.batch) == ("tiny:llava", 3,
                                                                      [1, 8, 32])
    assert args.image_tokens == [36, 576, 2880] and args.enforce_eager
    assert args.dtype == "float32" and args.out == DEFAULT_OUT
    assert DEFAULT_OUT.parts[-3:] == ("results", "draft-overhead", "results.json")
    quick = parse_args(["--quick", "--no-enforce-eager", "--image-tokens"])
    assert quick.batch == QUICK["batch"] and quick.image_batch == QUICK["image_batch"]
    assert quick.image_tokens == [] and not quick.enforce_eager
    assert parse_args(["--quick", "--batch", "1"]).batch == [1]  # explicit options win
    assert parse_args(["--demo"]).target == "demo"


def test_bad_options_are_refused(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--target", "some/model"])  # no drafts for it
    assert "needs --vispec-draft and --eagle-draft" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="not 1 to 8 square pictures"):
        parse_args(["--image-tokens", "37"])
    with pytest.raises(SystemExit):
        parse_args(["--batch", "0"])
    with pytest.raises(SystemExit):
        parse_args(["--image-tokens", "3844"])  # 62 x 62 patches + text + new tokens > 4096
    assert "do not fit" in capsys.readouterr().err


@pytest.mark.parametrize("tokens,layout", [(36, (1, 84)), (576, (1, 336)), (2880, (5, 336)),
                                           (72, (2, 84))])
def test_image_layouts(tokens, layout):
    assert image_layout(tokens) == layout


def step(syncs, num_reqs, host=0.002, forward=0.001, where="a.py:1 (f)"):
    return {"syncs": syncs, "by_kind": {"tolist": syncs} if syncs else {},
            "where": {where: syncs} if syncs else {}, "host_s": host, "forward_s": forward,
            "forward_calls": 3, "num_reqs": num_reqs}


def test_summary_keeps_the_full_batch_steps():
    counted = [step(9, 8), step(4, 8), step(2, 8, where="b.py:2 (g)"), step(30, 5)]
    timed = [step(0, 8, host=0.004), step(0, 8, host=0.002), step(0, 3, host=1.0)]
    got = summarise(counted, timed, batch=8)
    assert got["steps"] == 3 and got["steps_at_batch"] == 2
    assert got["host_ms"] == pytest.approx({"median": 3.0, "mean": 3.0, "min": 2.0})
    assert got["syncs_per_step"] == {"max": 9, "mean": 5.0}
    assert got["syncs_per_step_all_steps"]["max"] == 30
    assert got["top_locations"][0] == {"where": "a.py:1 (f)", "per_step": pytest.approx(13 / 3)}
    assert got["syncs_by_kind_per_step"] == {"tolist": 5.0}
    # No step at the batch size asked for (the batch never filled): all steps count.
    assert summarise(counted, timed, batch=32)["steps_at_batch"] == 3


def row(part, method, batch, host, forward, syncs, tokens=None):
    return {"part": part, "method": method, "batch": batch, "image_tokens": tokens,
            "steps_at_batch": 10, "host_ms": {"median": host, "mean": host},
            "forward_ms": {"median": forward, "mean": forward},
            "syncs_per_step": {"max": syncs, "mean": syncs / 2},
            "top_locations": [{"where": "vllm_vispec/proposer.py:304 (int32)",
                               "per_step": 9.0}] if syncs else []}


def test_table_and_json(tmp_path):
    rows = [row("batch", "vispec", 1, 3.0, 2.0, 26), row("batch", "eagle", 1, 1.5, 1.0, 0),
            row("image_tokens", "vispec", 1, 3.0, 1.0, 0, 2880),
            row("image_tokens", "eagle", 1, 3.0, 4.0, 0, 2880)]
    report = {"target": "tiny:llava", "num_speculative_tokens": 3, "dtype": "float32",
              "enforce_eager": True, "openmp": "intel", "rows": rows,
              "ratios_vispec_over_eagle": ratios(rows),
              "image_layouts": {"2880": "5 picture(s) of 336x336 px, 576 tokens each"}}
    text = table(report)
    assert ("| vispec | 1 | 10 | 3.00 / 3.00 | 2.00 / 2.00 | 26 / 13.0 | "
            "`vllm_vispec/proposer.py:304 (int32)` (9.0) |") in text
    assert "| eagle | 1 | 10 | 1.50 / 1.50 | 1.00 / 1.00 | 0 / 0.0 | – |" in text
    assert "OpenMP intel." in text
    assert "| 2880 | 5 picture(s) of 336x336 px, 576 tokens each | 1 | 1.00 | 4.00 | 0.25 |" \
        in text
    by_part = {r["part"]: r for r in report["ratios_vispec_over_eagle"]}
    assert by_part["batch"]["host_ms"] == 2.0 and by_part["image_tokens"]["forward_ms"] == 0.25
    out = tmp_path / "x" / "results.json"
    write(report, out)
    assert json.loads(out.read_text())["rows"] == rows
    assert (tmp_path / "x" / "table.md").read_text() == text


def test_eagle_form_of_a_vispec_draft(tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    from tiny_models import build_eagle_draft
    from vllm_vispec.model.layout import DraftDims, expected_shapes, published_config
    dims = DraftDims(hidden_size=8, num_heads=2, num_kv_heads=2, head_dim=4,
                     intermediate_size=16, vocab_size=10, num_q=2, qkv_bias=False,
                     fc_bias=True, rms_norm_eps=1e-5, rope_theta=1e4,
                     max_position_embeddings=64)
    target_cfg = {"architectures": ["LlavaForConditionalGeneration"], "model_type": "llava",
                  "text_config": {"bos_token_id": 1, "eos_token_id": 2}}
    vispec, target = tmp_path / "vispec", tmp_path / "target"
    vispec.mkdir(), target.mkdir()
    (vispec / "config.json").write_text(json.dumps(published_config(dims, target_cfg)))
    (target / "config.json").write_text(json.dumps(target_cfg))
    state = {k: torch.randn(shape) for k, shape in expected_shapes(dims).items()}
    state["fc.bias"] = torch.zeros(8)
    save_file(state, vispec / "model.safetensors")
    build_eagle_draft(vispec, target, tmp_path / "eagle")
    got = load_file(tmp_path / "eagle" / "model.safetensors")
    assert set(got) == {"fc.weight", "embed_tokens.weight"} | {
        k for k in state if k.startswith("layers.0.")}
    assert torch.equal(got["fc.weight"], state["fc.weight"])
    cfg = json.loads((tmp_path / "eagle" / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["num_hidden_layers"] == 1
    assert (cfg["num_key_value_heads"], cfg["max_position_embeddings"]) == (2, 64)
    state["fc.bias"] = torch.ones(8)
    save_file(state, vispec / "model.safetensors")
    with pytest.raises(ValueError, match="non-zero bias"):
        build_eagle_draft(vispec, target, tmp_path / "eagle2")


def test_intel_openmp_is_detected_from_ld_preload(monkeypatch):
    import draft_overhead
    monkeypatch.setenv("LD_PRELOAD", "/x/lib/libiomp5.so")
    assert draft_overhead.openmp_in_use() == "intel"
    monkeypatch.setattr(draft_overhead.os, "execve", lambda *a: pytest.fail("re-ran"))
    draft_overhead.reexec_with_intel_openmp([])  # already preloaded: no second run
    monkeypatch.delenv("LD_PRELOAD")
    assert draft_overhead.openmp_in_use() == "gnu"


def test_model_folders_are_shown_relative_to_the_checkout():
    from draft_overhead import shown
    root = Path(__file__).resolve().parents[2]
    assert shown(str(root / ".cache" / "t")) == str(Path(".cache") / "t")
    assert shown("llava-hf/llava-1.5-7b-hf") == "llava-hf/llava-1.5-7b-hf"
    assert shown("/elsewhere/t") == "/elsewhere/t" and shown(None) is None
