"""``vispec-train``: make training data with the target, train a ViSpec draft, export it.

  vispec-train data --target TARGET --prompts FILE --out DATA  # the target answers FILE
  vispec-train fit --target TARGET --data DATA --stage 1 --out STAGE1
  vispec-train fit --target TARGET --data DATA --stage 2 --init STAGE1/draft --out STAGE2
  vispec-train fit ... --arch eagle                       # the text-only EAGLE baseline
  vispec-train recipe --target TARGET --prompts FILE --out DIR  # all of it, both drafts

FILE is your prompt set (jsonl, COCO captions, LLaVA-Pretrain / ShareGPT conversations;
`vispec-train data --help` describes them). Without --prompts the prompts are the demo
domain's generated pictures of coloured shapes, for the tiny demo target.

``fit`` exports ``OUT/draft`` in the published checkpoint layout, which
``"method": "vispec", "model": "OUT/draft"`` loads as is. A stopped ``fit`` resumes from
``OUT/checkpoint.pt`` when run again with the same arguments.

``fit`` also runs data-parallel under torchrun (DDP; gloo on CPU, nccl on GPU), each
process training its share of every ``--batch-size`` batch; process 0 writes the files:

  torchrun --nproc-per-node 8 -m vllm_vispec.train fit ... --batch-size 16
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..model.checkpoint import read_draft
from .data_command import (COMPLETE, DEMO_COUNTS, DEMO_PROMPTS, DESCRIPTION, PROMPT_FORMATS,
                           SETTINGS, add_prompt_options, data_settings, run_data)
from .draft_dims import draft_dims_for_target


RECIPE = """\
Runs data (text-only and image prompts), then stage 1 on text and stage 2 on images for
the ViSpec draft, and the same two stages, data and epochs for a text-only EAGLE draft.
Writes OUT/vispec/draft and OUT/eagle/draft. Each step is skipped when its output exists,
so a stopped recipe resumes; a data folder made from other prompts or settings is
refused."""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="vispec-train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--target", type=Path, required=True,
                        help="target VLM folder (HF format)")
    common.add_argument("--seed", type=int, default=0,
                        help="seed of prompts, pictures and training (%(default)s)")

    d = sub.add_parser("data", parents=[common], help="generate training samples with the target",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description=DESCRIPTION, epilog=PROMPT_FORMATS)
    d.add_argument("--out", type=Path, required=True, help="folder for sample_*.pt")
    d.add_argument("--prompts", default=DEMO_PROMPTS, metavar="FILE",
                   help="prompt file (formats below); default: the demo domain")
    d.add_argument("--num-prompts", type=int, default=None,
                   help="prompts to answer, drawn with --seed from a file (default: all of a "
                   f"file, {DEMO_COUNTS['data']} of the demo domain)")
    d.add_argument("--max-tokens", type=int, default=64,
                   help="tokens per answer (%(default)s)")
    d.add_argument("--text-only", action="store_true",
                   help="prompts without images (stage 1 data): a file's pictures are left "
                   "out")
    add_prompt_options(d)

    f = sub.add_parser("fit", parents=[common], help="train a draft and export it",
                       description="Stage 1 trains the EAGLE part on text (ViSpec's image "
                       "modules stay as initialised); stage 2 trains everything with images, "
                       "the L1-on-probabilities + ListMLE loss and self-rollout.")
    f.add_argument("--data", type=Path, required=True, help="folder made by `data`")
    f.add_argument("--out", type=Path, required=True,
                   help="output folder: checkpoint.pt, history.json, draft/")
    f.add_argument("--stage", type=int, choices=[1, 2], default=2, help="(%(default)s)")
    f.add_argument("--arch", choices=["vispec", "eagle"], default="vispec",
                   help="vispec: the ViSpec draft (published layout, for \"method\": "
                   "\"vispec\"); eagle: the text-only baseline, same layer and training but "
                   "no image modules, exported for vLLM's \"method\": \"eagle\" (%(default)s)")
    f.add_argument("--init", type=Path, default=None,
                   help="draft to start from (published layout), e.g. stage 1's export")
    f.add_argument("--num-q", type=int, default=2,
                   help="adaptor queries for a fresh draft: 1 compressed token + 1 global "
                   "vector at 2 (%(default)s)")
    f.add_argument("--epochs", type=int, default=3, help="(%(default)s)")
    f.add_argument("--batch-size", type=int, default=1,
                   help="samples per optimizer step over all processes; a multiple of the "
                   "torchrun process count (%(default)s)")
    f.add_argument("--lr", type=float, default=3e-5, help="AdamW learning rate (%(default)s)")
    f.add_argument("--rollout-steps", type=int, default=2,
                   help="stage-2 self-rollout passes (%(default)s)")
    f.add_argument("--feature-noise", type=float, default=0.2,
                   help="uniform input-feature noise scale (%(default)s)")
    f.add_argument("--holdout", type=float, default=0.1,
                   help="fraction of samples held out for evaluation (%(default)s)")
    f.add_argument("--no-resume", action="store_true", help="ignore OUT/checkpoint.pt")
    f.add_argument("--bf16", action="store_true",
                   help="bf16 autocast for the forward pass (weights and optimizer stay "
                   "fp32); faster on GPUs and on CPUs with AVX512-BF16 or AMX")
    f.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where to train: auto takes this process's GPU (LOCAL_RANK under "
                   "torchrun) when there is one (%(default)s)")

    r = sub.add_parser("recipe", parents=[common],
                       help="the whole two-stage recipe, and the text-only baseline",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description=RECIPE, epilog=PROMPT_FORMATS)
    r.add_argument("--out", type=Path, required=True, help="output folder")
    r.add_argument("--prompts", default=DEMO_PROMPTS, metavar="FILE",
                   help="prompt file for stage 2 (image prompts); default: the demo domain")
    r.add_argument("--text-prompts", default=None, metavar="FILE",
                   help="prompt file for stage 1, pictures left out (default: --prompts)")
    r.add_argument("--num-prompts", type=int, default=None,
                   help="image prompts for stage 2 (default: all of a file, "
                   f"{DEMO_COUNTS['recipe']} of the demo domain)")
    r.add_argument("--num-text-prompts", type=int, default=None,
                   help="text-only prompts for stage 1 (default: --num-prompts of the "
                   "--prompts file, all of a --text-prompts file, "
                   f"{DEMO_COUNTS['recipe-text']} of the demo domain)")
    r.add_argument("--max-tokens", type=int, default=160,
                   help="tokens per answer (%(default)s)")
    r.add_argument("--epochs", type=int, default=3, help="epochs per stage (%(default)s)")
    r.add_argument("--lr", type=float, default=1e-3,
                   help="stage 1 AdamW learning rate (%(default)s)")
    r.add_argument("--stage2-lr", type=float, default=3e-4,
                   help="stage 2 learning rate (%(default)s): the fresh image adaptor "
                   "diverged at 1e-3 on the demo target")
    r.add_argument("--num-q", type=int, default=2, help="adaptor queries (%(default)s)")
    r.add_argument("--bf16", action="store_true", help="bf16 autocast in both stages")
    r.add_argument("--arch", choices=["vispec", "eagle"], nargs="+",
                   default=["vispec", "eagle"], help="drafts to train (%(default)s)")
    add_prompt_options(r)
    return p.parse_args(argv)


def run_fit(args) -> dict:
    from .data import load_dataset
    from .distributed import init_data_parallel, shutdown, training_device
    from .draft import TrainableDraft, initial_weights, text_only_dims
    from .export import export_draft, export_eagle_draft, read_eagle_draft
    from .target_features import load_target
    from .trainer import TrainConfig, evaluate, train

    device = training_device(args.device)
    dp = init_data_parallel(device)
    target_model, _ = load_target(str(args.target))
    lm_head = target_model.get_output_embeddings().weight
    embed = target_model.get_input_embeddings().weight
    target_cfg = json.loads((args.target / "config.json").read_text())
    text_only = args.arch == "eagle"
    if args.init is not None and text_only:
        dims, weights = read_eagle_draft(args.init, args.num_q)
    elif args.init is not None:
        dims, path = read_draft(args.init)
        weights = load_file(path)
    else:
        dims = draft_dims_for_target(target_cfg, args.num_q)
        dims = text_only_dims(dims) if text_only else dims
        weights = initial_weights(dims, embed, args.seed, text_only=text_only)
    samples = load_dataset(args.data)
    n_eval = max(1, int(len(samples) * args.holdout)) if len(samples) > 1 else 0
    held_out, samples = samples[:n_eval], samples[n_eval:]
    model = TrainableDraft(dims, weights, lm_head).to(device)
    cfg = TrainConfig(stage=args.stage, epochs=args.epochs, lr=args.lr,
                      rollout_steps=args.rollout_steps, feature_noise=args.feature_noise,
                      seed=args.seed, bf16=args.bf16, batch_size=args.batch_size)
    evaluate_here = bool(held_out) and dp.is_main
    before = evaluate(model, held_out, args.stage) if evaluate_here else None
    history = train(model, samples, cfg, args.out, resume=not args.no_resume, dp=dp)
    shutdown(dp)
    if not dp.is_main:
        return {"history": history}
    after = evaluate(model, held_out, args.stage) if evaluate_here else None
    export = export_eagle_draft if text_only else export_draft
    draft = export(model, target_cfg, args.out / "draft")
    report = {"history": history, "held_out_before": before, "held_out_after": after,
              "train_samples": len(samples), "held_out_samples": len(held_out),
              "processes": dp.world_size, "batch_size": args.batch_size, "draft": str(draft)}
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    print(f"[vispec-train] exported {draft}; held-out before {before}, after {after}")
    return report


def recipe_data_steps(args) -> list[tuple[str, list[str]]]:
    """(folder, ``data`` arguments) of the recipe's text-only and image data."""
    from .prompts import is_entry
    shared = ["--target", str(args.target), "--seed", str(args.seed),
              "--max-tokens", str(args.max_tokens), "--prompts-format", args.prompts_format,
              "--max-model-len", str(args.max_model_len), "--kv-cache-gib",
              str(args.kv_cache_gib), *(["--long-answers"] if args.long_answers else [])]
    for flag in ("image_root", "min_pixels", "max_pixels"):
        if getattr(args, flag) is not None:
            shared += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    steps = []
    for name, source, count, demo_count, extra in (
            ("data-text", args.text_prompts or args.prompts, args.num_text_prompts,
             DEMO_COUNTS["recipe-text"], ["--text-only"]),
            ("data-image", args.prompts, args.num_prompts, DEMO_COUNTS["recipe"], [])):
        if count is None and name == "data-text" and not args.text_prompts \
                and not is_entry(args.prompts):
            count = args.num_prompts  # the same file: as many prompts as stage 2
        if count is None and is_entry(source):
            count = demo_count
        steps.append((name, ["data", *shared, "--prompts", source,
                             *([] if count is None else ["--num-prompts", str(count)]),
                             "--out", str(args.out / name), *extra]))
    return steps


def check_same_data(folder: Path, data_argv: list[str]) -> None:
    """Refuses to reuse a data folder made from other prompts or settings."""
    if not (folder / SETTINGS).is_file():
        return  # made before settings were recorded
    made = json.loads((folder / SETTINGS).read_text())
    wanted = data_settings(parse_args(data_argv))
    differ = sorted(k for k in wanted if made.get(k) != wanted[k])
    if differ:
        raise SystemExit(f"vispec-train recipe: {folder} was made with other {differ} "
                         f"({[made.get(k) for k in differ]}, now {[wanted[k] for k in differ]}); "
                         "remove it or use another --out")


def run_recipe(args) -> dict[str, Path]:
    out, target, seed = args.out, str(args.target), str(args.seed)
    common = ["--target", target, "--seed", seed]
    for name, data_argv in recipe_data_steps(args):
        if (out / name / COMPLETE).is_file():
            check_same_data(out / name, data_argv)
        else:
            main(data_argv)
    drafts = {}
    for arch in args.arch:
        fit = [*common, "--arch", arch, "--epochs", str(args.epochs),
               "--num-q", str(args.num_q), *(["--bf16"] if args.bf16 else [])]
        stage1, stage2 = out / f"{arch}-stage1", out / arch
        if not (stage1 / "report.json").is_file():
            main(["fit", *fit, "--stage", "1", "--lr", str(args.lr),
                  "--data", str(out / "data-text"), "--out", str(stage1)])
        if not (stage2 / "report.json").is_file():
            main(["fit", *fit, "--stage", "2", "--lr", str(args.stage2_lr),
                  "--data", str(out / "data-image"), "--init", str(stage1 / "draft"),
                  "--out", str(stage2)])
        drafts[arch] = stage2 / "draft"
    print("[vispec-train] drafts: " + ", ".join(f"{k}={v}" for k, v in drafts.items()))
    return drafts


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.command != "fit" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise SystemExit(f"vispec-train {args.command} runs in one process; only `fit` "
                         "trains under torchrun")
    torch.manual_seed(args.seed)
    from .prompt_files import PromptFileError
    try:
        {"data": run_data, "fit": run_fit, "recipe": run_recipe}[args.command](args)
    except PromptFileError as e:
        raise SystemExit(f"vispec-train {args.command}: {e}") from None
    return 0
