"""The training loop: ViSpec's two stages, self-rollout, feature noise, resume, progress,
and data parallelism over torchrun's processes (DDP)."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from .distributed import DataParallel
from .draft import TrainableDraft, loss_slots
from .precision import resolve_bf16
from .losses import LOSSES, top1_accuracy
from .target_features import Sample


@dataclass
class TrainConfig:
    stage: int = 2
    epochs: int = 3
    lr: float = 3e-5
    betas: tuple[float, float] = (0.9, 0.95)
    clip_value: float = 0.5  # gradient clipping by value, as ViSpec does
    warmup_fraction: float = 0.05
    rollout_steps: int = 2  # self-rollout passes after the teacher-forced one (stage 2)
    feature_noise: float = 0.2  # uniform noise on input features, scaled by 512 / length
    seed: int = 0
    bf16: bool = False  # bf16 autocast (fp32 weights and optimizer state)
    batch_size: int = 1  # samples per optimizer step, over all processes


def feature_noise(hidden: torch.Tensor, scale: float, gen: torch.Generator) -> torch.Tensor:
    """EAGLE's uniform noise on the input features: (U[0,1) - 0.5) · scale · 512 / L."""
    if scale <= 0:
        return hidden
    u = torch.rand(hidden.shape, generator=gen, dtype=hidden.dtype).to(hidden.device)
    return hidden + (u - 0.5) * scale * 512 / hidden.shape[0]


def sample_loss(model: TrainableDraft, sample: Sample, cfg: TrainConfig,
                gen: torch.Generator | None) -> tuple[torch.Tensor, float]:
    """Mean loss over the sample's answer slots, teacher-forced plus self-rollouts."""
    sample = sample.to(model.embed.device)
    mask = loss_slots(sample).to(model.embed.device)
    targets = sample.hidden[1:]
    loss_fn = LOSSES[cfg.stage]
    hidden = sample.hidden[:-1]
    if gen is not None:
        hidden = feature_noise(hidden, cfg.feature_noise, gen)
    out = model(sample, hidden)
    losses = [loss_fn(out[mask], targets[mask], model.lm_head).mean()]
    accuracy = top1_accuracy(out[mask], targets[mask], model.lm_head).mean().item()
    if cfg.stage == 2:
        for _ in range(cfg.rollout_steps):
            # The draft's own features, shifted one slot, replace the target's: what it
            # sees at depth >= 2 when drafting, so it cannot just read off the target.
            hidden = torch.cat((sample.hidden[:1], out[:-1]))
            out = model(sample, hidden)
            losses.append(loss_fn(out[mask], targets[mask], model.lm_head).mean())
    return torch.stack(losses).mean(), accuracy


def noise_generator(seed: int, epoch: int, sample: int) -> torch.Generator:
    """Feature noise drawn per sample, so it does not depend on which process or in which
    order a sample is trained."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 1_000_003 + sample)


class BatchLoss(nn.Module):
    """One optimizer step's loss on this process's samples (their mean), as one forward:
    what DistributedDataParallel wraps (the rollouts call the draft several times)."""

    def __init__(self, model: TrainableDraft, cfg: TrainConfig) -> None:
        super().__init__()
        self.model, self.cfg = model, cfg

    def forward(self, samples: list[Sample], gens: list[torch.Generator | None]):
        results = [sample_loss(self.model, s, self.cfg, g) for s, g in zip(samples, gens)]
        loss = torch.stack([r[0] for r in results]).mean()
        return loss, sum(r[1] for r in results) / len(results)


def lr_lambda(total: int, warmup: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))
    return f


def train(model: TrainableDraft, samples: Sequence[Sample], cfg: TrainConfig, out_dir: Path,
          resume: bool = True, progress: bool = True,
          dp: DataParallel = DataParallel()) -> list[dict]:
    """Trains in place; checkpoints every epoch to ``out_dir/checkpoint.pt`` (resumable).
    Returns one record per epoch (mean loss, top-1 accuracy, the loss of every step).

    Each step takes ``cfg.batch_size`` samples in a shuffled order every process agrees on;
    under ``dp`` each process computes its share and DDP averages the gradients, so the
    run follows the single-process one with the same batch size. A last, incomplete batch
    of an epoch is skipped. Each process reads only the samples of its shares; only the main
    process writes files.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    steps_per_epoch = len(samples) // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{len(samples)} training samples do not fill one batch of "
                         f"{cfg.batch_size}")
    if cfg.batch_size % dp.world_size:
        raise ValueError(f"--batch-size {cfg.batch_size} must be a multiple of the "
                         f"{dp.world_size} training processes")
    model.set_stage(cfg.stage)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas)
    total = cfg.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lr_lambda(total, max(1, math.ceil(cfg.warmup_fraction * total))))
    history: list[dict] = []
    start_epoch = 0
    ckpt_path = out_dir / "checkpoint.pt"
    if resume and ckpt_path.exists():
        ckpt = torch.load(ckpt_path, weights_only=False, map_location=model.embed.device)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        start_epoch, history = ckpt["epoch"], ckpt["history"]
    step_loss = BatchLoss(model, cfg)
    device = model.embed.device
    if dp.enabled:
        # Images leave the adaptor unused on a text-only share; frozen weights stay out.
        # The buffers (the target's embedding and lm_head) never change: not re-sent per step.
        step_loss = nn.parallel.DistributedDataParallel(
            step_loss, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True, broadcast_buffers=False)
    bf16 = cfg.bf16 if device.type == "cuda" else resolve_bf16(cfg.bf16, warn=tqdm.write)
    for epoch in range(start_epoch, cfg.epochs):
        order = list(range(len(samples)))
        random.Random(cfg.seed + epoch).shuffle(order)
        batches = [dp.shard(order[b * cfg.batch_size:(b + 1) * cfg.batch_size])
                   for b in range(steps_per_epoch)]
        bar = tqdm(batches, desc=f"stage {cfg.stage} epoch {epoch + 1}/{cfg.epochs}",
                   disable=not (progress and dp.is_main))
        losses, accs = [], []
        for batch in bar:
            gens = [noise_generator(cfg.seed, epoch, i) for i in batch]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss, acc = step_loss([samples[i] for i in batch], gens)
            opt.zero_grad()
            loss.backward()  # under DDP: gradients averaged over the processes here
            torch.nn.utils.clip_grad_value_(params, cfg.clip_value)
            opt.step()
            sched.step()
            losses.append(dp.mean(loss.item()))
            accs.append(dp.mean(acc))
            bar.set_postfix(loss=f"{sum(losses) / len(losses):.4f}",
                            acc=f"{sum(accs) / len(accs):.3f}")
        history.append({"epoch": epoch + 1, "loss": sum(losses) / len(losses),
                        "top1": sum(accs) / len(accs), "step_losses": losses})
        if dp.is_main:
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict(), "epoch": epoch + 1,
                        "history": history, "config": asdict(cfg)}, ckpt_path)
            (out_dir / "history.json").write_text(json.dumps(history, indent=2))
        dp.barrier()
    return history


@torch.no_grad()
def evaluate(model: TrainableDraft, samples: list[Sample], stage: int = 2) -> dict:
    """Teacher-forced loss and top-1 accuracy on held-out samples (no noise, no rollout)."""
    cfg = TrainConfig(stage=stage, rollout_steps=0)
    results = [sample_loss(model, s, cfg, None) for s in samples]
    return {"loss": sum(r[0].item() for r in results) / len(results),
            "top1": sum(r[1] for r in results) / len(results)}
