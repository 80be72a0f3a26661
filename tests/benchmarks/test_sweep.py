"""The benchmark sweep end to end on the tiny LLaVA: one JSON, a table and plots, greedy
text equal to no speculation at every concurrency, vLLM's counters read per level."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_sweep(out: Path, *extra: str) -> dict:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "sweep.py"), "--target", "tiny:llava",
           "--method", "none", "--method", "vispec=tiny:llava", "-k", "2",
           "--concurrency", "1", "3", "--prompts", "3", "--max-tokens", "12",
           "--max-model-len", "1024", "--ignore-eos", "--out", str(out), *extra]
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    return out, run_sweep(out)


def test_every_level_is_measured_and_lossless(offline):
    _, report = offline
    assert [(r["method"], r["num_speculative_tokens"]) for r in report["results"]] == [
        ("none", 0), ("vispec=tiny:llava", 2)]
    for r in report["results"]:
        assert [row["concurrency"] for row in r["levels"]] == [1, 3]
        for row in r["levels"]:
            assert row["requests"] == max(3, 2 * row["concurrency"])
            assert row["output_tokens"] == row["requests"] * 12
            assert row["tpot_s"]["median"] > 0 and row["ttft_s"]["p99"] >= row["ttft_s"]["median"]
            assert row["matches_no_speculation"] is True
    spec = report["results"][1]["levels"]
    none = report["results"][0]["levels"]
    assert all(row["drafts"] > 0 and 1 <= row["acceptance_length"] <= 3 for row in spec)
    assert all(len(row["accepted_per_position"]) == 2 for row in spec)
    assert all(row["drafts"] == 0 and row["acceptance_length"] is None for row in none)
    # Per-level counters, not cumulative: the two levels' drafts add up to no more than
    # the tokens generated.
    assert sum(row["drafts"] for row in spec) <= sum(row["output_tokens"] for row in spec)


def test_table_and_plots_are_written(offline):
    out, _ = offline
    table = (out / "table.md").read_text()
    assert "| vispec k=2 | 3 |" in table and "| none | 1 |" in table
    for name in ("speedup.png", "throughput.png", "acceptance.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"


def test_bad_method_is_refused(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "sweep.py"), "--method", "medusa",
           "--out", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "unknown method 'medusa'" in done.stderr


def test_served_mode_measures_through_vllm_serve(tmp_path):
    report = run_sweep(tmp_path, "--served")
    assert report["mode"] == "served"
    none, spec = report["results"]
    for row in spec["levels"]:
        assert row["matches_no_speculation"] is True  # same text as the served baseline
        assert row["drafts"] > 0 and row["output_tokens"] == row["requests"] * 12
        assert row["ttft_s"]["median"] > 0 and row["tpot_s"]["median"] > 0
    assert (tmp_path / "logs" / "vispec-k2.log").is_file()
