"""The bounded soak (benchmarks/soak.py) against `vllm serve` with vispec: 500 mixed
requests at 16 then 64 in flight, streams dropped by the client, corrupt pictures. Every
completed answer equals the server's answer without speculation, no 5xx, the server alive
and empty at the end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SOAKS = {
    "llava-chain": ["--target", "tiny:llava", "--method", "vispec=tiny:llava", "-k", "3",
                    "--requests", "500"],
    # Trees at every batch size (no chain fallback), M-RoPE positions.
    "qwen-trees": ["--target", "tiny:qwen2_5_vl", "--method", "vispec-tree=tiny:qwen2_5_vl",
                   "--tree", "2,4,11", "--requests", "200"],
}


@pytest.mark.parametrize("soak", list(SOAKS))
def test_soak_is_lossless_and_the_server_survives(soak, tmp_path):
    out = tmp_path / "soak.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "soak.py"), *SOAKS[soak],
           "--concurrency", "16", "64", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1500)
    assert out.exists(), done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    print(soak, {k: report[k] for k in ("sent", "ok", "aborted_by_client",
                                        "status_4xx_expected", "mismatches", "status_5xx")})
    assert report["sent"] == int(SOAKS[soak][SOAKS[soak].index("--requests") + 1])
    assert report["mismatches"] == 0, report["examples"]
    assert report["status_5xx"] == report["transport_errors"] == 0, report["examples"]
    assert report["status_4xx_unexpected"] == 0, report["examples"]
    assert report["server_alive_after"] and report["requests_left_running"] == 0
    # The mix really happened: answers of every kind, client aborts, refused pictures.
    assert all(report["by_kind"][k]["ok"] > 0 for k in ("text", "one_image", "two_images"))
    assert report["aborted_by_client"] > 0 and report["status_4xx_expected"] > 0
    assert report["ok"] >= 0.8 * report["sent"]
    assert report["spec_decode"]["accepted_tokens"] > 0
    assert [p["concurrency"] for p in report["phases"]] == [16, 64]
    assert done.returncode == 0
