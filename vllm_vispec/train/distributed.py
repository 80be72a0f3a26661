"""Data-parallel training under ``torchrun``: the process group, this rank's share of each
global batch, and the few collectives the trainer needs.

``torchrun --nproc-per-node N -m vllm_vispec.train fit ...`` sets RANK / WORLD_SIZE /
MASTER_ADDR; without them everything below is the single-process identity.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DataParallel:
    rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, batch: list[int]) -> list[int]:
        """This rank's samples of one global batch (every rank gets as many)."""
        if len(batch) % self.world_size:
            raise ValueError(f"a global batch of {len(batch)} samples cannot be split over "
                             f"{self.world_size} processes")
        return batch[self.rank::self.world_size]

    def mean(self, value: float) -> float:
        """The mean of ``value`` over the ranks."""
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t)
        return t.item() / self.world_size

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def training_device(requested: str = "auto") -> torch.device:
    """``auto``: this process's GPU (torchrun's LOCAL_RANK) when there is one, else CPU."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: PyTorch sees no CUDA device")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(requested)


def init_data_parallel(device: torch.device) -> DataParallel:
    """Joins torchrun's process group when there is one: nccl for GPUs, gloo on CPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DataParallel()
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DataParallel(dist.get_rank(), dist.get_world_size())


def shutdown(dp: DataParallel) -> None:
    if dp.enabled and dist.is_initialized():
        dist.destroy_process_group()
