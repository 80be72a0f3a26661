"""vispec-selfcheck end to end on this machine, a real failure making the exit non-zero,
and the pieces its verdicts rest on (token comparison, the plugin-free baseline)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from matrix import rows

from vllm_vispec.selfcheck.engine_checks import equality_rows, tie_margin_for
from vllm_vispec.selfcheck.equality import compare_greedy
from vllm_vispec.selfcheck.kernel_checks import KERNEL_FILES
from vllm_vispec.selfcheck.processes import ProcessRun, engine_env

SCRIPT = Path(sys.executable).with_name("vispec-selfcheck")
# Two of the default targets (1-D positions; M-RoPE with DeepStack): the rows are made
# alike for every target, and the e2e tests take each target through the same engines.
TARGETS = tuple(rows(["llava", "qwen3_vl"], ["qwen2_5_vl"]))
EQUALITY_ROWS = ("text only", "one image", "two images", "batched (3)")


def selfcheck(*args: str, tmp_path: Path, timeout: float = 900) -> tuple[int, str, dict]:
    """Runs the installed console script; (exit status, printed table, --json contents)."""
    assert SCRIPT.exists(), "the vispec-selfcheck console script is not installed"
    out = tmp_path / "selfcheck.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([str(SCRIPT), *args, "--json", str(out), "--log-dir",
                           str(tmp_path / "logs")], capture_output=True, text=True, env=env,
                          timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr, json.loads(out.read_text())


def row(report: dict, group: str, name: str) -> dict:
    matches = [c for c in report["checks"] if c["group"] == group and c["name"] == name]
    assert len(matches) == 1, f"{group} {name!r} not listed once: {report['checks']}"
    return matches[0]


def test_every_check_passes_on_this_machine(tmp_path):
    code, table, report = selfcheck("--targets", ",".join(TARGETS), tmp_path=tmp_path)
    assert code == 0, table
    assert report["exit_code"] == 0
    # This machine runs the CPU build: trees are supported, so nothing may be skipped.
    assert [c for c in report["checks"] if c["result"] != "pass"] == [], table
    for kernel in KERNEL_FILES:
        for dtype in ("float32", "bfloat16"):
            check = row(report, "kernels", f"{kernel} {dtype}")
            assert 0 <= check["data"]["max_abs_err"] <= check["data"]["tolerance"]
    for kind in TARGETS:
        for group, label in (("chains", f"{kind} chain k=3"), ("trees", f"{kind} tree")):
            for name in EQUALITY_ROWS:
                data = row(report, group, f"{label}: {name}")["data"]
                expected = 72 if name.startswith("batched") else 24
                assert data["tokens_compared"] == data["tokens_total"] == expected
            accepted = row(report, group, f"{label}: drafts accepted")["data"]
            assert 0 < accepted["num_accepted_tokens"] < accepted["num_draft_tokens"]
        # The baseline really was vLLM alone; the vispec engines really had the plugin.
        base = report["engines"][f"{kind}-none"]["facts"]
        assert base["plugin"] == {"registered": False, "patches_applied": []}
        assert base["drafter"] is None
        spec = report["engines"][f"{kind}-chain"]["facts"]
        assert spec["plugin"]["registered"] and spec["plugin"]["patches_applied"]
        assert spec["drafter"] == "VispecProposer"
        # What the table reports about the draft's attention comes from the engine.
        facts = report["engine_facts"][kind]
        assert facts["draft_attention"]["backend"] == "CPU_ATTN"
        assert facts["kv_cache_layout"].startswith("LBHNC")
        assert facts["draft_attention"]["kv_dtype"] == "float32"
    for line in ("platform", "llava: draft attention", "qwen3_vl: KV cache",
                 "trees   qwen3_vl tree: batched (3)"):
        assert line in table
    assert "CPU_ATTN" in table and "0 failed" in table


def test_a_failing_kernel_makes_the_exit_non_zero(tmp_path):
    code, table, report = selfcheck("--only", "kernels", "--inject-fault", "kernels",
                                    tmp_path=tmp_path, timeout=300)
    assert code == 1 and report["exit_code"] == 1, table
    for dtype in ("float32", "bfloat16"):
        bad = row(report, "kernels", f"compressed_attention {dtype}")
        assert bad["result"] == "FAIL"
        assert bad["data"]["max_abs_err"] > bad["data"]["tolerance"]
        for kernel in ("tree_attention", "image_compression"):
            assert row(report, "kernels", f"{kernel} {dtype}")["result"] == "pass"
    assert {c["group"] for c in report["checks"]} == {"kernels"}
    assert "How to read a failure" in table and "FAIL" in table


def test_by_default_every_published_family_is_checked():
    from vllm_vispec.selfcheck.cli import parse_args
    assert parse_args([]).kinds == ["llava", "qwen2_5_vl", "qwen3_vl"]
    assert parse_args(["--targets", "qwen3_vl_moe"]).kinds == ["qwen3_vl_moe"]


def test_help_names_the_options():
    proc = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0
    for option in ("--only", "--skip-trees", "--json", "--max-tokens", "--inject-fault",
                   "How to read a failure"):
        assert option in proc.stdout


def test_a_differing_token_fails_and_is_located():
    c = compare_greedy([5, 6, 7, 8], [5, 6, 9, 8])
    assert not c.ok and c.compared == 2 and "token 2" in c.note
    assert not compare_greedy([5, 6], [5, 6, 7]).ok  # a different length fails too
    assert compare_greedy([5, 6, 7], [5, 6, 7]).ok


def test_a_near_tie_passes_only_within_the_margin_and_on_the_runner_up():
    expected, got = [1, 2, 3], [1, 4, 5]
    top2 = [[(1, -0.1), (9, -3.0)], [(2, -0.70), (4, -0.72)], [(3, -0.2), (5, -2.0)]]
    tie = compare_greedy(expected, got, top2, tie_margin=0.1)
    assert tie.ok and tie.compared == 1 and "near-tie" in tie.note
    assert not compare_greedy(expected, got, top2, tie_margin=0.01).ok
    assert not compare_greedy(expected, got, top2, tie_margin=0.0).ok
    not_runner_up = [[(1, -0.1), (9, -3.0)], [(2, -0.70), (7, -0.71)], [(3, -0.2), (5, -2.0)]]
    assert not compare_greedy(expected, got, not_runner_up, tie_margin=0.1).ok
    # Exact equality on the CPU in float32, a margin elsewhere.
    assert tie_margin_for("cpu", "float32", None) == 0.0
    assert tie_margin_for("cuda", "bfloat16", None) > 0
    assert tie_margin_for("cuda", "bfloat16", 0.0) == 0.0


def test_the_baseline_environment_loads_no_plugin():
    """The baseline engine's environment, read by vLLM 0.32's own plugin loader:
    VLLM_PLUGINS="" is an allow-list naming no plugin (unset would load them all)."""
    env = engine_env(with_plugin=False)
    assert env["VLLM_PLUGINS"] == "" and "TRITON_INTERPRET" not in env
    code = ("from vllm.plugins import DEFAULT_PLUGINS_GROUP, load_plugins_by_group; "
            "print(sorted(load_plugins_by_group(DEFAULT_PLUGINS_GROUP)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=300, check=True).stdout
    assert out.splitlines()[-1] == "[]", out


def test_a_differing_prompt_and_a_dead_engine_fail_their_rows(tmp_path):
    prompts = ("text", "one_image", "two_images")

    def engine(tokens: dict[str, list[int]], counters=None) -> ProcessRun:
        outputs = {p: {"tokens": t} for p, t in tokens.items()}
        return ProcessRun(ok=True, seconds=1.0, log=tmp_path / "x.log",
                          result={"alone": outputs, "batched": outputs,
                                  "counters": counters or {"num_drafts": 4,
                                                           "num_draft_tokens": 12,
                                                           "num_accepted_tokens": 5}})
    base = engine({p: [1, 2, 3] for p in prompts})
    spec = engine({**{p: [1, 2, 3] for p in prompts}, "one_image": [1, 2, 4]})
    rows = {r.name: r for r in equality_rows("chains", "llava chain k=3", base, spec, 0.0)}
    assert rows["llava chain k=3: one image"].result == "FAIL"
    assert "token 2 differs: baseline 3, vispec 4" in rows["llava chain k=3: one image"].detail
    assert rows["llava chain k=3: batched (3)"].result == "FAIL"
    assert rows["llava chain k=3: text only"].result == "pass"
    assert rows["llava chain k=3: drafts accepted"].result == "pass"
    never = engine({p: [1, 2, 3] for p in prompts},
                   {"num_drafts": 4, "num_draft_tokens": 12, "num_accepted_tokens": 0})
    rows = {r.name: r for r in equality_rows("chains", "x", base, never, 0.0)}
    assert rows["x: drafts accepted"].result == "FAIL"
    assert rows["x: text only"].result == "pass"
    dead = ProcessRun(ok=False, seconds=1.0, log=tmp_path / "dead.log",
                      error="RuntimeError: view size is not compatible")
    rows = equality_rows("chains", "x", base, dead, 0.0)
    assert rows and all(r.result == "FAIL" and "view size" in r.detail for r in rows)
