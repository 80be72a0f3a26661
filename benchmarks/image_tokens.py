"""Acceptance and speed against image tokens per picture: ViSpec vs a text-only EAGLE draft
vs ngram, on demo targets that see the same scenes as 36, 144 and 576 image tokens.

ViSpec's claim is that a shallow draft loses track of the picture as image tokens grow
into the hundreds, and that compressing each picture into a few tokens plus a global
vector fixes it. For each size this builds (once; cached) the target of the image-token
series (``vllm_vispec/tiny/scaled_target.py``: warm-started from the size before), scores
it on held-out pictures (item recall), trains its ViSpec and text-only EAGLE drafts with
``vispec-train recipe`` (same data, same epochs), then runs ``sweep.py`` on held-out
pictures: no speculation, ngram, eagle and vispec at ``-k``, greedy, at each concurrency.
Writes, in ``--out``: ``tokens-N/`` (each sweep: results.json, table.md, plots),
``results.json`` (per size: recall, and per method and concurrency the acceptance length,
acceptance per position, output tokens/s and speed-up), ``table.md`` and
``image-tokens.png``. A rerun reuses what is there (``--rerun`` runs the sweeps again).

    python benchmarks/image_tokens.py --out benchmarks/results/image-tokens

First run on 2 CPU cores: about 45 minutes of target training, 30 of draft training and
20 of sweeps. Speed ratios hold within one sweep (same machine, same prompts).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import common  # noqa: F401  (puts the checkout on sys.path)

HERE = Path(__file__).resolve().parent
SIZES = (36, 144, 576)
DRAFTS = ("vispec", "eagle", "ngram")


def target_report(tokens: int, pictures: int, out: Path) -> dict:
    """The series' target with ``tokens`` per picture, built if needed, and its item
    recall on ``pictures`` held-out pictures (kept in ``out``)."""
    from vllm_vispec.tiny import IMAGE_TOKEN_SERIES, image_token_target
    from vllm_vispec.tiny.demo_target import evaluate_demo_target
    path = out / f"target-{tokens}.json"
    if path.is_file():
        return json.loads(path.read_text())
    target = image_token_target(tokens)
    report = {"image_tokens": tokens, "training_minutes": IMAGE_TOKEN_SERIES[tokens],
              "picture_pixels": common.demo_picture_size(str(target)),
              **evaluate_demo_target(target, count=pictures)}
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    print(json.dumps(report), flush=True)
    return report


MAX_PICTURES = 4  # of the multi-picture prompts (demo-multi: 2 to 4)


def multi_picture_args(tokens: int, args) -> list[str]:
    """The sweep's settings for prompts of 2 to 4 pictures and long answers: the answer
    runs past the target's end of answer (ignore_eos) to ``--long-max-tokens``."""
    need = MAX_PICTURES * (tokens + 8) + 64 + args.long_max_tokens
    return ["--dataset", "demo-multi", "--max-images", str(MAX_PICTURES), "--ignore-eos",
            "--prompts", str(args.multi_prompts),
            "--max-tokens", str(args.long_max_tokens),
            "--max-model-len", str(-(-need // 1024) * 1024)]


def run_sweep(tokens: int, args, multi: bool = False) -> dict:
    out = args.out / f"tokens-{tokens}{'-multi' if multi else ''}"
    if args.rerun or not (out / "results.json").is_file():
        from vllm_vispec.tiny import image_token_drafts
        image_token_drafts(tokens)  # trained here, before the sweep's engines start
        name = f"demo-{tokens}"
        cmd = [sys.executable, str(HERE / "sweep.py"), "--target", name,
               "--method", "none", "--method", "ngram", "--method", f"eagle={name}",
               "--method", f"vispec={name}", "-k", *map(str, args.num_speculative_tokens),
               "--concurrency", *map(str, args.concurrency), "--prompts", str(args.prompts),
               "--max-tokens", str(args.max_tokens), "--seed", str(args.seed),
               "--out", str(out)]
        cmd += multi_picture_args(tokens, args) if multi else []  # the later flags win
        print("[image-tokens]", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    return json.loads((out / "results.json").read_text())


def summarize(tokens: int, target: dict, sweep: dict, multi: dict | None = None) -> dict:
    entry = {"image_tokens": tokens, "target": target, "methods": _rows(sweep)}
    if multi is not None:
        entry["multi_picture"] = _rows(multi)
    return entry


def _rows(sweep: dict) -> dict:
    rows = {}
    for r in sweep["results"]:
        name = r["method"].split("=", 1)[0]
        for level in r["levels"]:
            rows.setdefault(name, {})[str(level["concurrency"])] = {
                "num_speculative_tokens": r["num_speculative_tokens"],
                "acceptance_length": level["acceptance_length"],
                "accepted_per_position": level["accepted_per_position"],
                "output_tokens_per_s": level["output_tokens_per_s"],
                "speedup_vs_no_speculation": level.get("speedup_vs_no_speculation"),
                "matches_no_speculation": level.get("matches_no_speculation")}
    return rows


def _fmt(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def table(series: list[dict], levels: list[int], key: str = "methods") -> str:
    head = ["image tokens", "target recall", "method"]
    for c in levels:
        head += [f"acceptance length (c={c})", f"accepted per position (c={c})",
                 f"tok/s (c={c})", f"speed-up (c={c})"]
    lines = ["| " + " | ".join(head + ["same text"]) + " |", "|" + "---|" * (len(head) + 1)]
    for entry in series:
        recall = entry["target"]["item_recall"]
        for name in ("none", *DRAFTS):
            by_level = entry.get(key, {}).get(name)
            if not by_level:
                continue
            cells = [str(entry["image_tokens"]), f"{recall:.2f}", name]
            same = []
            for c in levels:
                row = by_level.get(str(c), {})
                per_pos = " ".join(f"{a:.2f}" for a in row.get("accepted_per_position") or [])
                cells += [_fmt(row.get("acceptance_length"), ".2f"), per_pos or "–",
                          _fmt(row.get("output_tokens_per_s"), ".1f"),
                          _fmt(row.get("speedup_vs_no_speculation"), ".2f") + "×"]
                same.append(row.get("matches_no_speculation"))
            cells.append("–" if name == "none" else
                         ("yes" if all(same) else "NO"))
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(series: list[dict], levels: list[int], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (acc, speed) = plt.subplots(1, 2, figsize=(11, 4.5))
    xs = [e["image_tokens"] for e in series]
    styles = ["-", "--", ":", "-."]
    for i, name in enumerate(DRAFTS):
        color = f"C{i}"
        values = [e["methods"].get(name, {}).get(str(levels[0]), {}).get("acceptance_length")
                  for e in series]
        acc.plot(xs, values, "o-", color=color, label=f"{name}, one picture")
        multi = [e.get("multi_picture", {}).get(name, {}).get(str(levels[0]), {})
                 .get("acceptance_length") for e in series]
        if any(v is not None for v in multi):
            acc.plot(xs, multi, "s--", color=color,
                     label=f"{name}, 2-{MAX_PICTURES} pictures, long answers")
        for style, c in zip(styles, levels):
            speeds = [e["methods"].get(name, {}).get(str(c), {})
                      .get("speedup_vs_no_speculation") for e in series]
            speed.plot(xs, speeds, marker="o", linestyle=style, color=color,
                       label=f"{name}, concurrency {c}, one picture")
    for ax in (acc, speed):
        ax.set_xscale("log")
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.minorticks_off()
        ax.set_xlabel("image tokens per picture")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    acc.set_ylabel(f"acceptance length (concurrency {levels[0]})")
    speed.axhline(1.0, color="grey", linewidth=0.8)
    speed.set_ylabel("speed-up over no speculation (output tok/s)")
    fig.suptitle("Demo targets: the same scenes at more image tokens per picture")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image-tokens", type=int, nargs="+", default=list(SIZES),
                   choices=SIZES, help="sizes to run (%(default)s)")
    p.add_argument("-k", "--num-speculative-tokens", type=int, nargs="+", default=[3],
                   help="draft length of ngram, eagle and vispec (%(default)s)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    p.add_argument("--prompts", type=int, default=16,
                   help="held-out pictures per level (%(default)s)")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--seed", type=int, default=1000,
                   help="held-out prompt seed; the drafts' data uses 0 (%(default)s)")
    p.add_argument("--recall-pictures", type=int, default=20,
                   help="held-out pictures each target is scored on (%(default)s)")
    p.add_argument("--multi-picture", action=argparse.BooleanOptionalAction, default=True,
                   help="also prompts of 2 to 4 pictures with long answers (%(default)s)")
    p.add_argument("--multi-prompts", type=int, default=8,
                   help="multi-picture prompts per level (%(default)s)")
    p.add_argument("--long-max-tokens", type=int, default=256,
                   help="answer length of the multi-picture prompts (%(default)s)")
    p.add_argument("--rerun", action="store_true", help="run the sweeps again")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    args = p.parse_args(argv)
    series = []
    for tokens in sorted(args.image_tokens):
        target = target_report(tokens, args.recall_pictures, args.out)
        single = run_sweep(tokens, args)
        multi = run_sweep(tokens, args, multi=True) if args.multi_picture else None
        series.append(summarize(tokens, target, single, multi))
        write(series, args)
    print(f"wrote {args.out}")
    return 0


def write(series: list[dict], args) -> None:
    """The cross-size JSON, table and plot, rewritten after each size."""
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"command": "python benchmarks/image_tokens.py " + " ".join(sys.argv[1:]),
              "concurrency": args.concurrency, "prompts": args.prompts,
              "max_tokens": args.max_tokens, "multi_prompts": args.multi_prompts,
              "long_max_tokens": args.long_max_tokens, "series": series}
    (args.out / "results.json").write_text(json.dumps(report, indent=2))
    text = "## One picture a prompt\n\n" + table(series, args.concurrency)
    if any("multi_picture" in entry for entry in series):
        text += (f"\n## 2 to {MAX_PICTURES} pictures a prompt, {args.long_max_tokens}-token "
                 "answers (past the target's end of answer)\n\n"
                 + table(series, args.concurrency, key="multi_picture"))
    (args.out / "table.md").write_text(text)
    plot(series, args.concurrency, args.out / "image-tokens.png")


if __name__ == "__main__":
    raise SystemExit(main())
