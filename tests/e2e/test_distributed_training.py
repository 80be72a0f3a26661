"""Data-parallel draft training under torchrun (DDP, gloo, two CPU processes) follows the
single-process run with the same global batch, step by step, and its export serves in vLLM."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from test_training import assert_serves_losslessly

from vllm_vispec.tiny import tiny_target
from vllm_vispec.train.cli import main as vispec_train

# Relative: the processes sum gradients in another order than one process does.
LOSS_RTOL = 1e-4


def fit(data, out, *launcher: str) -> dict:
    args = ["fit", "--target", str(tiny_target("llava")), "--data", str(data),
            "--out", str(out), "--stage", "2", "--epochs", "2", "--batch-size", "4",
            "--lr", "1e-3", "--rollout-steps", "1", "--holdout", "0.25", "--no-resume"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*launcher, "-m", "vllm_vispec.train", *args], env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    out = tmp_path_factory.mktemp("ddp") / "data"
    assert vispec_train(["data", "--target", str(tiny_target("llava")), "--out", str(out),
                         "--num-prompts", "12", "--max-tokens", "24"]) == 0
    return out


def test_two_processes_follow_one_and_the_export_serves(data, tmp_path, baseline):
    one = fit(data, tmp_path / "one", sys.executable)
    two = fit(data, tmp_path / "two", sys.executable, "-m", "torch.distributed.run",
              "--standalone", "--nproc-per-node", "2")
    assert (one["processes"], two["processes"]) == (1, 2)
    curve_one = [x for h in one["history"] for x in h["step_losses"]]
    curve_two = [x for h in two["history"] for x in h["step_losses"]]
    assert len(curve_one) == len(curve_two) == 2 * (9 // 4)  # 9 training samples
    print("loss curves:", [f"{a:.6f}/{b:.6f}" for a, b in zip(curve_one, curve_two)])
    assert curve_two == pytest.approx(curve_one, rel=LOSS_RTOL)
    assert curve_one[-1] < curve_one[0]
    assert two["held_out_after"]["loss"] == pytest.approx(one["held_out_after"]["loss"],
                                                          rel=LOSS_RTOL)
    assert_serves_losslessly({"method": "vispec", "model": two["draft"],
                              "num_speculative_tokens": 2}, baseline)

