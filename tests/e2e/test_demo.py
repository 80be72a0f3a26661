"""The README's demo command: a served answer identical to vLLM alone's, both speeds, and a
nonzero count of drafted tokens."""

from __future__ import annotations

import re
import subprocess
import sys


def test_demo_prints_an_answer_and_drafted_tokens(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "vllm_vispec.demo", "--max-tokens", "32",
         "--log", str(tmp_path / "server.log")],
        capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"\[demo\] answer: '.+'", proc.stdout)
    drafted = re.search(r"drafted tokens (\d+), accepted tokens (\d+)", proc.stdout)
    assert drafted and int(drafted.group(1)) > 0
    assert "completion tokens 32" in proc.stdout
    # Next to vLLM alone: the same text, and both speeds.
    assert "identical to vLLM without speculation: yes" in proc.stdout
    assert re.search(r"output tokens/s: [0-9.]+ with vispec, [0-9.]+ without; speed-up "
                     r"[0-9.]+x", proc.stdout)


def test_demo_help_explains_the_options():
    proc = subprocess.run([sys.executable, "-m", "vllm_vispec.demo", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    for option in ("--target", "--num-speculative-tokens", "--max-tokens", "--prompt"):
        assert option in proc.stdout
