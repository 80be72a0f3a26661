"""A sweep's results as a markdown table and PNG plots.

    python benchmarks/report.py benchmarks/results/sweep-quick/results.json

writes ``table.md``, ``speedup.png`` (speed-up over no speculation vs concurrency),
``throughput.png`` (output tokens/s vs concurrency) and ``acceptance.png`` (acceptance
rate per draft position, at the lowest concurrency) next to the JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def label(r: dict) -> str:
    name = r["method"].split("=", 1)[0]
    return name if name == "none" else f"{name} k={r['num_speculative_tokens']}"


def _fmt(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def table(report: dict) -> str:
    lines = ["| method | concurrency | output tok/s | speed-up | TPOT median / p99 (ms) | "
             "TTFT median / p99 (ms) | acceptance length | accepted per position | "
             "same text |", "|" + "---|" * 9]
    for r in report["results"]:
        for row in r["levels"]:
            per_pos = " ".join(f"{a:.2f}" for a in _drafted_positions(row)) or "–"
            same = row.get("matches_no_speculation")
            lines.append(
                f"| {label(r)} | {row['concurrency']} | {row['output_tokens_per_s']:.1f} | "
                f"{_fmt(row.get('speedup_vs_no_speculation'), '.2f')}× | "
                f"{_fmt(_ms(row['tpot_s']['median']), '.1f')} / "
                f"{_fmt(_ms(row['tpot_s']['p99']), '.1f')} | "
                f"{_fmt(_ms(row['ttft_s']['median']), '.0f')} / "
                f"{_fmt(_ms(row['ttft_s']['p99']), '.0f')} | "
                f"{_fmt(row['acceptance_length'], '.2f')} | {per_pos} | "
                f"{'–' if same is None else ('yes' if same else 'NO')} |")
    return "\n".join(lines) + "\n"


def _ms(seconds):
    return None if seconds is None else seconds * 1000


def plots(report: dict, out: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    # One colour per configuration in every plot.
    colors = {label(r): f"C{i % 10}" for i, r in enumerate(report["results"])}
    written = []
    for key, name, ylabel in (("speedup_vs_no_speculation", "speedup.png",
                               "speed-up over no speculation (output tok/s)"),
                              ("output_tokens_per_s", "throughput.png", "output tokens/s")):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for r in report["results"]:
            points = [(row["concurrency"], row[key]) for row in r["levels"] if key in row]
            if points:
                ax.plot(*zip(*points), marker="o", label=label(r), color=colors[label(r)])
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrency (requests in flight)")
        ax.set_ylabel(ylabel)
        if key.startswith("speedup"):
            ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.legend(fontsize=8)
        ax.set_title(f"{report['target']}: {ylabel}")
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        written.append(out / name)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in report["results"]:
        row = r["levels"][0]
        if row["accepted_per_position"]:
            ks = range(1, len(_drafted_positions(row)) + 1)
            ax.plot(ks, _drafted_positions(row), marker="o", color=colors[label(r)],
                    label=f"{label(r)} (AL {row['acceptance_length']:.2f})")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("draft position")
    ax.set_ylabel("acceptance rate")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    first = report["results"][0]["levels"][0]["concurrency"]
    ax.set_title(f"acceptance per position, concurrency {first}")
    fig.tight_layout()
    fig.savefig(out / "acceptance.png", dpi=110)
    plt.close(fig)
    written.append(out / "acceptance.png")
    return written


def write_report(report: dict, out: Path) -> None:
    (out / "table.md").write_text(table(report))
    plots(report, out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", type=Path, help="results.json of a sweep")
    args = p.parse_args(argv)
    write_report(json.loads(args.results.read_text()), args.results.parent)
    print(f"wrote {args.results.parent}/table.md and plots")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def _drafted_positions(row: dict) -> list[float]:
    """Per-position acceptance without the trailing zeros of a tree (vLLM counts a tree's
    nodes as positions; only its depth can be accepted)."""
    values = list(row["accepted_per_position"])
    while len(values) > 1 and values[-1] == 0:
        values.pop()
    return values
