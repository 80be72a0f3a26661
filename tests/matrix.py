"""Which rows of the test matrix a run takes.

The default run (CI, `scripts/test.sh`) takes each engine path on the targets that cover
it; `VISPEC_FULL_MATRIX=1` adds the rows that repeat a path on another target (about
four more minutes on 2 cores)."""

from __future__ import annotations

import os

FULL = os.environ.get("VISPEC_FULL_MATRIX") == "1"


def rows(default: list, more: list) -> list:
    """``default``, plus ``more`` under VISPEC_FULL_MATRIX=1."""
    return [*default, *more] if FULL else list(default)
