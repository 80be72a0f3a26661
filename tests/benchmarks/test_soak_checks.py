"""The soak's bookkeeping: every failure kind is counted and fails the soak; the request
plan really mixes streams, aborts and corrupt pictures."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from soak import Outcome, Planned, Prompt, Report, plan, tally  # noqa: E402

POOL = [Prompt([{"role": "user", "content": "hi"}], 8, "text")]
BASELINE = ["a red circle"]


def report_of(*cases: tuple[bool, Outcome]) -> Report:
    report = Report("t", "vispec=d", 3, [4])
    planned = [Planned(i, 0, True, None, bad) for i, (bad, _) in enumerate(cases)]
    outcomes = {i: o for i, (_, o) in enumerate(cases)}
    tally(report, POOL, planned, outcomes, BASELINE)
    report.server_alive_after, report.requests_left_running = True, 0
    return report


def test_a_clean_soak_passes():
    report = report_of((False, Outcome("ok", 200, "a red circle")),
                       (False, Outcome("aborted", 200, "a red")),
                       (True, Outcome("4xx", 400, detail="bad picture")))
    assert (report.ok, report.aborted_by_client, report.status_4xx_expected) == (1, 1, 1)
    assert report.passed


def test_each_failure_is_counted_and_fails_the_soak():
    cases = {
        "mismatches": (False, Outcome("ok", 200, "a blue square")),
        "status_5xx": (False, Outcome("5xx", 500, detail="boom")),
        "transport_errors": (False, Outcome("error", None, detail="reset")),
        "status_4xx_unexpected": (False, Outcome("4xx", 400, detail="refused")),
    }
    for counter, case in cases.items():
        report = report_of(case)
        assert getattr(report, counter) == 1, counter
        assert not report.passed and report.examples, counter
    # An aborted stream whose text is no prefix of the baseline is a mismatch too, and a
    # corrupt picture that got answered is a 4xx that did not happen.
    assert report_of((False, Outcome("aborted", 200, "a blu"))).mismatches == 1
    assert report_of((True, Outcome("ok", 200, "x"))).status_4xx_unexpected == 1
    dead = report_of((False, Outcome("ok", 200, "a red circle")))
    dead.server_alive_after = False
    assert not dead.passed


def test_plan_mixes_streams_aborts_and_bad_requests():
    planned = plan(500, 48, abort_fraction=0.15, bad_fraction=0.03, seed=0)
    assert plan(500, 48, 0.15, 0.03, 0) == planned  # reproducible
    streams = [p for p in planned if p.stream]
    assert 150 < len(streams) < 350
    assert 5 < sum(p.abort_after is not None for p in streams) < 60
    assert all(p.abort_after is None for p in planned if not p.stream)
    assert 3 < sum(p.bad for p in planned) < 40
    assert len({p.prompt for p in planned}) == 48
