"""The self-check's one table: what this machine runs, then every check's result."""

from __future__ import annotations

import textwrap
from typing import Any

from .results import FAIL, PASS, SKIPPED, CheckResult

HOW_TO_READ = """\
How to read a failure:
  kernels  FAIL: a Triton kernel disagrees with its PyTorch reference on this device
           (the draft uses the kernels on CUDA); the row gives the worst error and the
           allowance, the --json file the cases and any traceback.
  chains / trees FAIL: vispec's greedy tokens differ from vLLM's without speculation
           (the row names the first differing token, both token ids and the baseline's
           top-2 margin there), or an engine failed to start or to generate (the row
           gives the error; the --json file has its traceback and the last lines of its
           log, and the log itself is kept in the log directory below).
  drafts accepted FAIL: the output was right but no drafted token was ever accepted, so
           the draft is not computing what it should.
Report a failure with this whole table and the file written by --json."""


def draft_fact(facts: dict[str, Any]) -> str:
    draft, target = facts.get("draft_attention"), facts.get("target_attention")
    if not draft:
        return "no draft attention layer found"
    text = draft["backend"] + (f" (isa {draft['isa']})" if "isa" in draft else "")
    text += f", {facts.get('draft_attention_layers', 1)} layer"
    if target:
        text += f"; target {target['backend']}"
    return text + f"; runner {facts.get('model_runner')}, drafter {facts.get('drafter')}"


def kv_fact(facts: dict[str, Any]) -> str:
    draft = facts.get("draft_attention") or facts.get("target_attention") or {}
    text = f"{facts.get('kv_cache_layout')}, {draft.get('kv_dtype', '?')} " \
           f"(cache dtype {facts.get('cache_dtype')})"
    if "kv_shape" in draft:
        text += f", draft layer {draft['kv_shape']} strides {draft['kv_stride']}"
    return text


def fact_rows(info: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [("vLLM", info["vllm"]), ("vllm-vispec", info["vispec"]),
            ("platform", info["platform"]), ("dtype", info["dtype"])]
    for kind, facts in info.get("engine_facts", {}).items():
        rows.append((f"{kind}: draft attention", draft_fact(facts)))
        rows.append((f"{kind}: KV cache", kv_fact(facts)))
    if not info.get("engine_facts"):
        rows.append(("draft attention / KV cache", "not known: no engine reported them"
                     if info.get("ran_engines") else "not known: no engine was run"))
    return rows


def render(info: dict[str, Any], results: list[CheckResult], width: int = 120) -> str:
    facts = fact_rows(info)
    checks = [(f"{r.group:<7} {r.name}", r.result, r.detail) for r in results]
    left = max([len(k) for k, _ in facts] + [len(c[0]) for c in checks] + [5])
    mid = max([len(c[1]) for c in checks] + [6])
    detail_width = max(30, width - left - mid - 6)
    lines = ["vllm-vispec self-check", "=" * width]

    def add(a: str, b: str, c: str) -> None:
        wrapped = textwrap.wrap(c, detail_width) or [""]
        lines.append(f"{a:<{left}}  {b:<{mid}}  {wrapped[0]}")
        lines.extend(f"{'':<{left}}  {'':<{mid}}  {more}" for more in wrapped[1:])

    for key, value in facts:  # a fact's value spans the result and detail columns
        wrapped = textwrap.wrap(value, width - left - 2) or [""]
        lines.append(f"{key:<{left}}  {wrapped[0]}")
        lines.extend(f"{'':<{left}}  {more}" for more in wrapped[1:])
    lines.append("-" * width)
    add("check", "result", "detail")
    lines.append("-" * width)
    for row in checks:
        add(*row)
    lines.append("=" * width)
    counts = {s: sum(r.result == s for r in results) for s in (PASS, FAIL, SKIPPED)}
    lines.append(f"{counts[PASS]} passed, {counts[FAIL]} failed, {counts[SKIPPED]} skipped"
                 f"; logs in {info['log_dir']}")
    if counts[FAIL]:
        lines += ["", HOW_TO_READ]
    return "\n".join(lines)
