"""Data parallelism's pieces: each process's share of a batch, lazily read samples."""

from __future__ import annotations

import pytest
import torch

from vllm_vispec.train.data import SampleFiles
from vllm_vispec.train.distributed import DataParallel
from vllm_vispec.train.trainer import noise_generator


def test_shares_partition_each_batch_evenly():
    batch = [7, 3, 9, 0, 4, 1]
    shares = [DataParallel(rank=r, world_size=3).shard(batch) for r in range(3)]
    assert sorted(i for share in shares for i in share) == sorted(batch)
    assert {len(share) for share in shares} == {2}
    assert DataParallel().shard(batch) == batch
    with pytest.raises(ValueError, match="cannot be split over 4 processes"):
        DataParallel(rank=1, world_size=4).shard(batch)


def test_noise_depends_on_the_sample_not_the_process():
    a = torch.rand(3, generator=noise_generator(0, 1, 5))
    assert torch.equal(a, torch.rand(3, generator=noise_generator(0, 1, 5)))
    assert not torch.equal(a, torch.rand(3, generator=noise_generator(0, 1, 6)))
    assert not torch.equal(a, torch.rand(3, generator=noise_generator(0, 2, 5)))


def test_sample_files_read_only_what_is_used(tmp_path, monkeypatch):
    from vllm_vispec.train import data
    files = []
    for i in range(4):
        files.append(tmp_path / f"sample_{i:06d}.pt")
        torch.save({"i": i}, files[-1])
    monkeypatch.setattr(data.Sample, "from_dict", staticmethod(lambda d: d["i"]))
    samples = SampleFiles(files)
    assert len(samples) == 4 and samples.num_loaded == 0
    assert samples[2] == 2 and samples[2] == 2 and samples.num_loaded == 1
    tail = samples[1:]
    assert len(tail) == 3 and tail[0] == 1
