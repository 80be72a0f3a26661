"""Draft training smoke test: data from the target through vLLM, a short stage-2 run whose
loss falls, and an export that the plugin loads and serves losslessly."""

from __future__ import annotations

import json
import os

import pytest
from prompts import conversations
from vllm_runs import greedy_chat, offline_llm, spec_counters

from vllm_vispec.model.checkpoint import read_draft
from vllm_vispec.tiny import tiny_target
from vllm_vispec.train.cli import main as vispec_train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    root = tmp_path_factory.mktemp("train")
    target = str(tiny_target("llava"))
    assert vispec_train(["data", "--target", target, "--out", str(root / "data"),
                         "--num-prompts", "12", "--max-tokens", "24"]) == 0
    assert vispec_train(["fit", "--target", target, "--data", str(root / "data"),
                         "--out", str(root / "stage2"), "--stage", "2", "--epochs", "4",
                         "--lr", "1e-3", "--rollout-steps", "1", "--holdout", "0.25"]) == 0
    return root


def assert_serves_losslessly(spec: dict, baseline) -> None:
    """The draft runs in vLLM (tiny LLaVA), drafts, and the greedy tokens are the target's."""
    with offline_llm("llava", spec) as llm:
        got = greedy_chat(llm, conversations())
        counters = spec_counters(llm)
    expected = baseline("llava")
    assert {k: v[0] for k, v in got.items()} == {k: v[0] for k, v in expected.items()}
    assert counters["num_draft_tokens"] > 0


def test_loss_falls_and_held_out_improves(trained):
    report = json.loads((trained / "stage2" / "report.json").read_text())
    losses = [h["loss"] for h in report["history"]]
    assert len(losses) == 4 and losses[-1] < 0.7 * losses[0], losses
    assert report["held_out_after"]["loss"] < report["held_out_before"]["loss"]
    assert report["held_out_samples"] == 3 and report["train_samples"] == 9


def test_export_is_in_the_published_layout_and_serves_losslessly(trained, baseline):
    draft = trained / "stage2" / "draft"
    dims, _ = read_draft(draft)  # strict: exactly the published keys and shapes
    assert dims.num_q == 2 and dims.hidden_size == 256
    assert_serves_losslessly({"method": "vispec", "model": str(draft),
                              "num_speculative_tokens": 2}, baseline)


def test_resume_continues_from_the_checkpoint(trained):
    target = str(tiny_target("llava"))
    args = ["fit", "--target", target, "--data", str(trained / "data"),
            "--out", str(trained / "stage2"), "--stage", "2", "--epochs", "5",
            "--lr", "1e-3", "--rollout-steps", "1", "--holdout", "0.25"]
    assert vispec_train(args) == 0
    history = json.loads((trained / "stage2" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5]  # only epoch 5 was new


def test_text_only_baseline_exports_for_vllms_own_eagle(trained, baseline):
    """The baseline draft (no image modules) trains on the same data and runs as vLLM's
    ``"method": "eagle"``, losslessly."""
    target = str(tiny_target("llava"))
    out = trained / "eagle"
    assert vispec_train(["fit", "--target", target, "--data", str(trained / "data"),
                         "--out", str(out), "--arch", "eagle", "--epochs", "2",
                         "--lr", "1e-3", "--rollout-steps", "1", "--holdout", "0.25"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["held_out_after"]["loss"] < report["held_out_before"]["loss"]
    config = json.loads((out / "draft" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["num_hidden_layers"] == 1
    assert_serves_losslessly({"method": "eagle", "model": str(out / "draft"),
                              "num_speculative_tokens": 2}, baseline)


def test_recipe_trains_both_drafts_on_the_same_data_and_resumes(tmp_path):
    target = str(tiny_target("llava"))
    args = ["recipe", "--target", target, "--out", str(tmp_path), "--num-prompts", "6",
            "--num-text-prompts", "4", "--max-tokens", "12", "--epochs", "1"]
    assert vispec_train(args) == 0
    dims, _ = read_draft(tmp_path / "vispec" / "draft")
    assert dims.num_q == 2
    eagle = json.loads((tmp_path / "eagle" / "draft" / "config.json").read_text())
    assert eagle["architectures"] == ["LlamaForCausalLM"]
    for arch in ("vispec", "eagle"):
        report = json.loads((tmp_path / arch / "report.json").read_text())
        assert report["train_samples"] + report["held_out_samples"] == 6  # the image data
        stage1 = json.loads((tmp_path / f"{arch}-stage1" / "report.json").read_text())
        assert stage1["train_samples"] + stage1["held_out_samples"] == 4  # the text data
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.safetensors")}
    assert vispec_train(args) == 0  # everything exists: nothing is redone
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.safetensors")} == stamps
