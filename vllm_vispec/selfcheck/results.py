"""One row of the self-check's table: a check's name, its result and what it measured."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

PASS, FAIL, SKIPPED = "pass", "FAIL", "skipped"


@dataclass
class CheckResult:
    group: str  # "kernels", "chains" or "trees"
    name: str
    result: str  # PASS, FAIL or SKIPPED
    detail: str = ""
    # What was measured, for the --json file (max_abs_err, tolerance, tokens_compared, ...).
    data: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CheckResult":
        return cls(**d)


def failed(results: list[CheckResult]) -> list[CheckResult]:
    return [r for r in results if r.result == FAIL]
