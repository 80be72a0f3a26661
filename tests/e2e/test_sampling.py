"""Speculation at temperature > 0 (top-k too) is lossless in distribution and reproducible:
token frequencies with vispec chains and trees match those without speculation (chi-square
test of homogeneity), and the same seeds give the same tokens, in one engine and in a new
one. The samples without speculation come from vLLM with no plugin loaded (plain_vllm)."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from plain_vllm import plain_run
from vllm_runs import offline_llm, spec_counters, vispec_config

SAMPLES = 400
POSITIONS = (1, 2, 3)  # output positions decided by verification steps (0 is prefill's)
TREE = {"depth": 2, "top_k": 4, "total_tokens": 11, "chain_above_batch": 1000,
        "off_above_batch": 1000}



def speculation(drafting: str) -> dict:
    return vispec_config("llava", 3) if drafting == "chain" else \
        vispec_config("llava", 2, tree=TREE)


PROMPT = [{"role": "user", "content": "Describe a red circle near the top."}]
ENGINE = dict(max_num_seqs=64)


def sampling_kwargs() -> list[dict]:
    return [dict(temperature=1.0, top_k=3, max_tokens=len(POSITIONS) + 1, seed=1000 + i,
                 ignore_eos=True) for i in range(SAMPLES)]


def sample(speculative_config):
    """Seeded samples, twice in one engine (asserted equal), and the spec counters."""
    from vllm import SamplingParams
    params = [SamplingParams(**kw) for kw in sampling_kwargs()]
    with offline_llm("llava", speculative_config, **ENGINE) as llm:
        runs = [[list(o.outputs[0].token_ids)
                 for o in llm.chat([PROMPT] * SAMPLES, params, use_tqdm=False)]
                for _ in range(2)]
        counters = spec_counters(llm)
    assert runs[0] == runs[1], "the same seeds gave other tokens in the same engine"
    return runs[0], counters


@pytest.fixture(scope="module")
def plain_samples():
    """The same seeded samples from vLLM without speculation or plugin, twice in one
    engine (asserted equal)."""
    batch = ([PROMPT] * SAMPLES, sampling_kwargs())
    runs = [[ids for ids, _ in outs]
            for outs in plain_run("llava", [batch, batch], **ENGINE)["outputs"]]
    assert runs[0] == runs[1], "the same seeds gave other tokens in the same engine"
    return runs[0]


def chi_square_p(a: Counter, b: Counter) -> float:
    """p-value of the two-sample chi-square test of homogeneity (Wilson-Hilferty); rare
    cells (fewer than 10 draws in all) are pooled so every expected count is >= 5."""
    rare = {c for c in set(a) | set(b) if a[c] + b[c] < 10}
    a, b = _pooled(a, rare), _pooled(b, rare)
    cells = set(a) | set(b)
    na, nb = sum(a.values()), sum(b.values())
    stat = 0.0
    for cell in cells:
        total = a[cell] + b[cell]
        for count, n in ((a[cell], na), (b[cell], nb)):
            expected = total * n / (na + nb)
            stat += (count - expected) ** 2 / expected
    df = len(cells) - 1
    if df == 0:
        return 1.0
    z = ((stat / df) ** (1 / 3) - (1 - 2 / (9 * df))) / math.sqrt(2 / (9 * df))
    return 0.5 * math.erfc(z / math.sqrt(2))


def _pooled(counts: Counter, rare: set) -> Counter:
    out: Counter = Counter()
    for cell, n in counts.items():
        out[("rare",) if cell in rare else cell] += n
    return out


@pytest.mark.parametrize("drafting", ["chain", "tree"])
def test_sampling_matches_target_distribution(drafting, plain_samples):
    plain = plain_samples
    got, counters = sample(speculation(drafting))
    # Verification really ran and accepted sampled drafts.
    assert counters["num_accepted_tokens"] > 0
    for pos in POSITIONS:
        # The token at `pos` together with the one before it: the conditional structure.
        a = Counter(tuple(t[pos - 1:pos + 1]) for t in plain)
        b = Counter(tuple(t[pos - 1:pos + 1]) for t in got)
        p = chi_square_p(a, b)
        assert p > 1e-3, f"position {pos}: p = {p:.2g}"
    # Seeds fix the outcome: the same seeds in a new engine give the same tokens.
    again, _ = sample(speculation(drafting))
    assert again == got
