"""Greedy equality rows of one tiny target: a baseline engine (vLLM alone), then vispec
chains and trees, each engine in its own process (:mod:`.processes`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .equality import TIE_MARGINS, compare_greedy
from .processes import ProcessRun, run_engine
from .prompts import PROMPT_LABELS
from .results import FAIL, PASS, SKIPPED, CheckResult


@dataclass(frozen=True)
class EngineSettings:
    dtype: str  # "float32" on CPU, "auto" (the model's default) on CUDA unless chosen
    enforce_eager: bool
    max_tokens: int
    k: int
    tie_margin: float  # 0: every difference fails
    timeout: float
    work_dir: Path

    def job(self, kind: str, mode: str) -> dict[str, Any]:
        return {"kind": kind, "mode": mode, "dtype": self.dtype, "k": self.k,
                "enforce_eager": self.enforce_eager, "max_tokens": self.max_tokens}


def tie_margin_for(platform: str, dtype: str, chosen: float | None) -> float:
    """Exact equality on the CPU in float32 (what the project's tests hold); elsewhere a
    difference may fall on a near-tie (see :mod:`.equality`)."""
    if chosen is not None:
        return chosen
    if platform == "cpu" and dtype == "float32":
        return 0.0
    return TIE_MARGINS.get(dtype, TIE_MARGINS["bfloat16"])


def engine_label(kind: str, mode: str, k: int) -> str:
    return f"{kind} {'chain k=' + str(k) if mode == 'chain' else 'tree'}"


def engine_failure_rows(group: str, label: str, why: str, data: dict) -> list[CheckResult]:
    names = [*PROMPT_LABELS.values(), f"batched ({len(PROMPT_LABELS)})", "drafts accepted"]
    return [CheckResult(group, f"{label}: {n}", FAIL, why, data) for n in names]


def skipped_rows(group: str, label: str, why: str) -> list[CheckResult]:
    return [CheckResult(group, f"{label}: all", SKIPPED, why)]


def compare_row(group: str, name: str, base: dict, spec: dict, prompts: list[str],
                tie_margin: float) -> CheckResult:
    comps = {p: compare_greedy(base[p]["tokens"], spec[p]["tokens"], base[p].get("top2"),
                               tie_margin) for p in prompts}
    compared = sum(c.compared for c in comps.values())
    total = sum(c.total for c in comps.values())
    ok = all(c.ok for c in comps.values())
    notes = [f"{PROMPT_LABELS[p]}: {c.note}" if len(prompts) > 1 else c.note
             for p, c in comps.items() if c.note]
    detail = "; ".join([f"{compared}/{total} tokens equal", *notes])
    data = {"tokens_compared": compared, "tokens_total": total,
            "baseline_tokens": {p: base[p]["tokens"] for p in prompts},
            "vispec_tokens": {p: spec[p]["tokens"] for p in prompts}}
    return CheckResult(group, name, PASS if ok else FAIL, detail, data)


def acceptance_row(group: str, label: str, counters: dict[str, float]) -> CheckResult:
    drafts = counters.get("num_drafts", 0)
    drafted = counters.get("num_draft_tokens", 0)
    accepted = counters.get("num_accepted_tokens", 0)
    # The tiny drafts are built so that some of their tokens are accepted: none accepted
    # means the draft is not computing what it should, even when the output is right.
    ok = accepted > 0
    length = 1 + accepted / drafts if drafts else 0.0
    return CheckResult(group, f"{label}: drafts accepted", PASS if ok else FAIL,
                       f"accepted {accepted:.0f} of {drafted:.0f} drafted tokens, "
                       f"acceptance length {length:.2f}", dict(counters))


def equality_rows(group: str, label: str, base: ProcessRun, spec: ProcessRun,
                  tie_margin: float) -> list[CheckResult]:
    if not base.ok:
        return engine_failure_rows(group, label, f"baseline engine (vLLM alone) failed: "
                                   f"{base.error} (log {base.log})", {"log": str(base.log)})
    if not spec.ok:
        return engine_failure_rows(group, label, f"vispec engine failed: {spec.error} "
                                   f"(log {spec.log})", {"log": str(spec.log)})
    rows = [compare_row(group, f"{label}: {PROMPT_LABELS[p]}", base.result["alone"],
                        spec.result["alone"], [p], tie_margin) for p in PROMPT_LABELS]
    rows.append(compare_row(group, f"{label}: batched ({len(PROMPT_LABELS)})",
                            base.result["batched"], spec.result["batched"],
                            list(PROMPT_LABELS), tie_margin))
    rows.append(acceptance_row(group, label, spec.result.get("counters", {})))
    return rows


def tree_support(facts: dict[str, Any] | None) -> str | None:
    """Why trees cannot run here (None: they can), as a vispec engine found it; without
    one, asked here."""
    if facts and "trees_unsupported" in facts:
        return facts["trees_unsupported"]
    from vllm.platforms import current_platform

    from .engine_facts import trees_unsupported
    return trees_unsupported(current_platform.device_name, None)


def check_target(kind: str, settings: EngineSettings, chains: bool, trees: bool,
                 skip_trees_reason: str | None, engines: dict[str, ProcessRun]
                 ) -> list[CheckResult]:
    """Runs the engines of ``kind`` (recorded in ``engines``) and returns their rows."""
    def engine(mode: str) -> ProcessRun:
        run = run_engine(settings.job(kind, mode), settings.work_dir, settings.timeout)
        engines[f"{kind}-{mode}"] = run
        return run

    rows: list[CheckResult] = []
    if not chains and skip_trees_reason:  # nothing here needs an engine
        return skipped_rows("trees", engine_label(kind, "tree", settings.k),
                            skip_trees_reason) if trees else rows
    base = engine("none")
    facts = None
    if chains:
        chain = engine("chain")
        facts = chain.result.get("facts") if isinstance(chain.result, dict) else None
        rows += equality_rows("chains", engine_label(kind, "chain", settings.k), base, chain,
                              settings.tie_margin)
    if trees:
        label = engine_label(kind, "tree", settings.k)
        why = skip_trees_reason or tree_support(facts)
        if why:
            rows += skipped_rows("trees", label, why)
        else:
            rows += equality_rows("trees", label, base, engine("tree"), settings.tie_margin)
    return rows
