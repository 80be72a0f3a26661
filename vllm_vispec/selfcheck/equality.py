"""Greedy equality of vispec's tokens with the tokens of vLLM without speculation.

On the CPU in float32 the two are identical token for token (the project's tests), so any
difference fails. In reduced precision, or on a GPU, verifying ``k + 1`` tokens in one
forward rounds differently from decoding one at a time, so greedy text may part where the
baseline's two best tokens are nearly tied; a difference passes only there (the margin
between the baseline's top two log-probabilities at most ``tie_margin``), and nothing after
it can be compared.
"""

from __future__ import annotations

from dataclasses import dataclass

# Top-two log-probability margins under which a difference is rounding, by dtype.
TIE_MARGINS = {"float32": 1e-3, "bfloat16": 0.1, "float16": 0.05}


@dataclass(frozen=True)
class Comparison:
    ok: bool
    compared: int  # tokens found equal before the end or the first difference
    total: int  # tokens the baseline generated
    note: str = ""  # why it failed, or the near-tie it passed on


def compare_greedy(expected: list[int], got: list[int],
                   expected_top2: list[list[tuple[int, float]]] | None = None,
                   tie_margin: float = 0.0) -> Comparison:
    """``expected_top2[i]``: the baseline's two best (token, logprob) at position ``i``."""
    total = len(expected)
    first = next((i for i, (a, b) in enumerate(zip(expected, got)) if a != b), None)
    if first is None:
        if len(got) == total:
            return Comparison(True, total, total)
        return Comparison(False, min(total, len(got)), total,
                          f"vispec generated {len(got)} tokens, the baseline {total}")
    top2 = expected_top2[first] if expected_top2 and first < len(expected_top2) else None
    margin = (top2[0][1] - top2[1][1]) if top2 and len(top2) == 2 else None
    if (tie_margin > 0 and margin is not None and got[first] == top2[1][0]
            and margin <= tie_margin):
        return Comparison(True, first, total,
                          f"parted at token {first} on a near-tie (baseline top-2 margin "
                          f"{margin:.3g} <= {tie_margin:g})")
    why = f"token {first} differs: baseline {expected[first]}, vispec {got[first]}"
    if margin is not None:
        why += f" (baseline top-2 margin {margin:.3g})"
    return Comparison(False, first, total, why)
