"""The ``"tree"`` option of a vispec speculative config, and when to use the tree.

``"tree": {"depth": 3, "top_k": 8, "total_tokens": 30}`` drafts an EAGLE-2 dynamic tree in
the convention of EAGLE-2 and ViSpec's code (the paper's setting): the draft's ``top_k``
best tokens after the root, then ``depth`` expansions, each of the ``top_k`` best nodes of
the last level into ``top_k`` children (``depth + 1`` levels); ``total_tokens`` counts the
root (the last verified token), so the ``total_tokens - 1`` best nodes are kept and
verified with it. Without ``"tree"`` vispec drafts a chain of ``num_speculative_tokens``.
A tree costs the target ``total_tokens`` verified tokens per request, so under load it
stops paying: above ``chain_above_batch`` running requests the step drafts a chain, above
``off_above_batch`` nothing.

vLLM's own knob for this is its dynamic speculation schedule,
``"num_speculative_tokens_per_batch_size": [[lo, hi, K], ...]`` in the speculative config:
its scheduler looks up each step's ``K`` by the step's batch size, caps it at vLLM's
``num_speculative_tokens`` (for a tree config the tree's node count
``N = total_tokens - 1``, or the chain length where that is longer) and hands it to the
drafter. Where a schedule is set, it decides (:meth:`TreeOptions.mode_for_tokens`):
``K >= N`` drafts the tree, ``0 < K < N`` a chain of ``K`` (what the scheduler reserved;
under async scheduling the drafter must fill exactly that), ``K = 0`` nothing; a tree step
whose sampling trees do not verify drafts the configured chain (filled up to ``K`` under
async scheduling). The two thresholds are that schedule written short; with a chain length ``c``
below ``N`` they equal

    [[1, chain_above_batch, N],
     [chain_above_batch + 1, off_above_batch, c],
     [off_above_batch + 1, max_num_seqs, 0]]

(empty ranges left out). Giving the thresholds as well as a schedule is refused
(:func:`refuse_thresholds_with_schedule`): they would be two answers to one question.
vLLM drops the schedule under data parallelism (with a warning); the thresholds, at their
defaults, then decide. With a schedule vLLM also runs the target's full CUDA graphs
piecewise (the verified length changes at run time).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from ..kernels.tree_attention import MAX_TREE_ROWS

# Trees only for a request running alone, the paper's setting (on the CPU, trees measured
# slower than chains even alone: benchmarks/results/README.md, "Trees vs chains").
DEFAULT_CHAIN_ABOVE_BATCH = 1
# Measured on the CPU demo target: a vispec chain (k = 3) ran 1.22x no speculation at
# concurrency 4 and 0.93x at 16.
DEFAULT_OFF_ABOVE_BATCH = 8


@dataclass(frozen=True)
class TreeOptions:
    depth: int = 3
    top_k: int = 8
    total_tokens: int = 30
    chain_above_batch: int = DEFAULT_CHAIN_ABOVE_BATCH
    off_above_batch: int = DEFAULT_OFF_ABOVE_BATCH

    @classmethod
    def parse(cls, value: Any) -> "TreeOptions":
        if not isinstance(value, dict):
            raise ValueError(f'vispec "tree" must be an object such as {{"depth": 3, '
                             f'"top_k": 8, "total_tokens": 30}}, got {value!r}')
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - names)
        if unknown:
            raise ValueError(f'unknown vispec "tree" option(s) {unknown}; valid: '
                             f"{sorted(names)}")
        for name, v in value.items():
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f'vispec "tree" option {name!r} must be a positive '
                                 f"integer, got {v!r}")
        options = cls(**value)
        options.check()
        return options

    @property
    def expansions(self) -> int:
        """Draft passes after the first one: one per level below level 1."""
        return self.depth

    @property
    def num_nodes(self) -> int:
        """Drafted tokens handed to the scheduler per request (the root aside)."""
        return self.total_tokens - 1

    def check(self) -> None:
        if self.total_tokens > MAX_TREE_ROWS:
            raise ValueError(f'vispec "tree": total_tokens is at most {MAX_TREE_ROWS} '
                             f"(the root included; got {self.total_tokens})")
        if self.total_tokens < 2:
            raise ValueError('vispec "tree": total_tokens counts the root and must be at '
                             f"least 2 (got {self.total_tokens})")
        if self.top_k * self.depth > MAX_TREE_ROWS:
            raise ValueError(f'vispec "tree": top_k * depth is at most {MAX_TREE_ROWS} '
                             f"(got {self.top_k} * {self.depth})")
        if self.chain_above_batch > self.off_above_batch:
            raise ValueError('vispec "tree": chain_above_batch must not exceed '
                             "off_above_batch")

    def mode(self, batch_size: int) -> str:
        """"tree", "chain" or "off" for a step with ``batch_size`` running requests."""
        if batch_size > self.off_above_batch:
            return "off"
        return "tree" if batch_size <= self.chain_above_batch else "chain"

    def mode_for_tokens(self, num_speculative_tokens: int) -> str:
        """"tree", "chain" or "off" for a step whose scheduled K (vLLM's dynamic schedule)
        is ``num_speculative_tokens``: a tree needs room for all its nodes."""
        if num_speculative_tokens >= self.num_nodes:
            return "tree"
        return "chain" if num_speculative_tokens > 0 else "off"

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


THRESHOLDS = ("chain_above_batch", "off_above_batch")
SCHEDULE = "num_speculative_tokens_per_batch_size"


def refuse_thresholds_with_schedule(tree: dict[str, Any], schedule: Any) -> None:
    """``tree`` as the user gave it; ``schedule``: vLLM's dynamic speculation schedule, or
    None. Both say when to draft a tree, a chain or nothing: only one may be given."""
    given = [name for name in THRESHOLDS if name in tree]
    if schedule is not None and given:
        raise ValueError(
            f'vispec "tree" options {given} and "{SCHEDULE}" both decide when a step '
            f'drafts a tree, a chain or nothing; give one of them (a schedule entry '
            f"[lo, hi, K] drafts the tree where K >= total_tokens - 1, a chain of K "
            f"where 0 < K < that, nothing where K = 0)")
