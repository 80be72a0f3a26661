"""HostSyncCounter on a fake proposer: each blocking kind is seen once, sync-free code
counts nothing, host data is free on the CPU build, nesting counts once, and every wrap
is gone on exit."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from vllm_vispec.host_syncs import HostSyncCounter


class FakeBase:
    """Stands in for SpecDecodeBaseProposer: ``propose`` runs the draft passes."""

    def propose(self, draft, cad=None, nested=False, mm_embed_inputs=None):
        if nested:
            return FakeBase.propose(self, draft, cad)
        return draft()


class FakeDrafter(FakeBase):
    """Stands in for VispecProposer: host planning, then the base class's passes."""

    device = torch.device("cpu")

    def __init__(self) -> None:
        self.model = torch.nn.Linear(4, 4)

    def propose(self, draft, cad=None, nested=False):
        torch.arange(3).tolist()  # planning from host data: outside the counted region
        int(torch.arange(3)[1])
        return super().propose(draft, cad, nested)


def counter(**kwargs) -> HostSyncCounter:
    return HostSyncCounter(targets=[(FakeBase, "propose")], cpu_is_device=True, **kwargs)


def one_step(fn, **kwargs) -> dict:
    with counter(**kwargs) as c:
        FakeBase().propose(fn)
    (step,) = c.steps
    return step


X = torch.arange(6)
CAD = SimpleNamespace(query_start_loc=torch.tensor([0, 2, 6]),
                      query_start_loc_cpu=torch.tensor([0, 2, 6]),
                      seq_lens=torch.tensor([5, 9]), num_reqs=2)


@pytest.mark.parametrize("kind,fn", [
    ("item", lambda: X[1].item()),
    ("item", lambda: bool(X[1])),
    ("item", lambda: int(X.sum())),
    ("item", lambda: [0, 1, 2][X[1]]),
    ("tolist", lambda: X.tolist()),
    ("cpu", lambda: X.cpu()),
    ("numpy", lambda: X.numpy()),
    ("__array__", lambda: np.asarray(X)),
    ("nonzero", lambda: X.nonzero()),
    ("bool_index", lambda: X[X > 2]),
    ("bool_index", lambda: X.clone().__setitem__(X > 2, 0)),
    ("masked_select", lambda: torch.masked_select(X, X > 2)),
    ("unique", lambda: torch.unique(X)),
    ("equal", lambda: torch.equal(X, X)),
    ("torch.tensor", lambda: torch.tensor([1, 2, 3])),
    ("torch.as_tensor", lambda: torch.as_tensor([1, 2, 3])),
    ("repeat_interleave", lambda: torch.repeat_interleave(X, X)),
    ("repeat_interleave", lambda: torch.repeat_interleave(X)),
])
def test_each_blocking_kind_counts_once(kind, fn):
    step = one_step(fn)
    assert step["by_kind"] == {kind: 1} and step["syncs"] == 1
    (where,) = step["where"]
    assert "test_host_syncs.py:" in where  # the culprit's line, not torch's


def test_sync_free_code_counts_nothing():
    def draft():
        y = X * 2 + 1
        idx = torch.arange(3).flip(0)
        torch.gather(y, 0, idx)
        y[idx]  # integer index: no sync
        torch.where(y > 3, y, 0)
        torch.repeat_interleave(X, X, output_size=15)
        torch.repeat_interleave(X, 2)
        y[1:3].sum(), y.shape[0], len(y), torch.as_tensor(y)
    step = one_step(draft)
    assert step["syncs"] == 0 and step["by_kind"] == {}


def test_host_data_is_free_on_the_cpu_build():
    def draft():
        CAD.query_start_loc_cpu.tolist()             # vLLM's CPU mirror
        int(CAD.query_start_loc_cpu[-1])             # a view of it
        qsl = CAD.query_start_loc_cpu
        torch.repeat_interleave(torch.arange(2), qsl[1:] - qsl[:-1])  # host repeats
        lens = torch.tensor([1, 2])                  # counted: Python data
        (lens + 1).tolist()                          # ... then host: free
        CAD.seq_lens.cpu().tolist()                  # counted once, at .cpu()
        CAD.query_start_loc.tolist()                 # the device tensor: counted
    with counter() as c:
        FakeBase().propose(draft, CAD)
    (step,) = c.steps
    assert step["by_kind"] == {"torch.tensor": 1, "cpu": 1, "tolist": 1}
    assert step["num_reqs"] == 2
    reads = sorted(k.split()[0] for k in step["host_reads"])
    assert reads == ["item", "repeat_interleave", "tolist", "tolist", "tolist"]


def test_a_mirror_that_is_the_device_tensor_and_the_image_mask():
    same = torch.tensor([4, 7])
    cad = SimpleNamespace(query_start_loc_cpu=torch.tensor([0, 1, 2]), seq_lens=same,
                          seq_lens_cpu_upper_bound=same, num_reqs=2)
    mask = torch.tensor([True, False, True, False, False, False])

    def draft():
        cad.seq_lens_cpu_upper_bound.tolist()  # also the device tensor: counted
        X[mask]                                # vLLM's image-token mask lives on the CPU
        X[~mask]                               # ... and so does what is made from it
    with counter() as c:
        FakeBase().propose(draft, cad, mm_embed_inputs=([X], mask))
    assert c.steps[0]["by_kind"] == {"tolist": 1}


def test_host_data_written_with_device_data_counts_again():
    def draft():
        lens = torch.tensor([1, 2])
        lens.copy_(X[:2])     # now holds device data
        lens.tolist()
    assert one_step(draft)["by_kind"] == {"torch.tensor": 1, "tolist": 1}


def test_nested_calls_count_once_and_planning_is_not_counted():
    drafter = FakeDrafter()

    def draft():
        X[1].item()
        drafter.model(torch.ones(2, 4))
        return X.tolist()

    with HostSyncCounter(drafter, targets=[(FakeBase, "propose")]) as c:
        assert c.cpu_is_device  # from the drafter's device
        drafter.propose(draft, nested=True)
        drafter.propose(draft)
    assert len(c.steps) == 2 and c.total == 4
    for step in c.steps:
        assert step["by_kind"] == {"item": 1, "tolist": 1}
        assert step["forward_calls"] == 1
        assert step["host_s"] >= step["forward_s"] > 0
    summary = c.summary()
    assert summary["syncs_max"] == 2 and summary["syncs_mean"] == 2.0
    assert summary["by_kind"] == {"item": 2, "tolist": 2}
    assert summary["forward_s"]["median"] > 0


def test_outside_the_region_and_other_threads_count_nothing():
    def other_thread():
        X[1].item()
        X.tolist()
        torch.tensor([1])

    def draft():
        t = threading.Thread(target=other_thread)
        t.start()
        t.join()

    with counter() as c:
        X[1].item()  # installed but not in a draft pass
        FakeBase().propose(draft)
    assert [s["syncs"] for s in c.steps] == [0]


def test_time_only_mode_installs_no_op_wraps():
    drafter = FakeDrafter()
    tolist = torch.Tensor.tolist
    with HostSyncCounter(drafter, targets=[(FakeBase, "propose")], count=False) as c:
        assert torch.Tensor.tolist is tolist
        drafter.propose(lambda: (X.tolist(), drafter.model(torch.ones(1, 4))))
    (step,) = c.steps
    assert step["syncs"] == 0 and step["forward_calls"] == 1 and step["host_s"] > 0


def test_every_wrap_is_removed_on_exit_even_after_an_error():
    drafter = FakeDrafter()
    before = (FakeBase.propose, torch.Tensor.tolist, torch.Tensor.cpu, torch.Tensor.__array__,
              torch.tensor, torch.as_tensor, vars(torch.Tensor).get("__array__"))
    forward = drafter.model.forward

    def boom():
        X.tolist()
        raise ValueError("draft failed")

    with pytest.raises(ValueError, match="draft failed"):
        with HostSyncCounter(drafter, targets=[(FakeBase, "propose")]) as c:
            assert FakeBase.propose is not before[0] and torch.tensor is not before[4]
            drafter.propose(boom)
    assert c.steps[0]["by_kind"] == {"tolist": 1}
    after = (FakeBase.propose, torch.Tensor.tolist, torch.Tensor.cpu, torch.Tensor.__array__,
             torch.tensor, torch.as_tensor, vars(torch.Tensor).get("__array__"))
    assert all(a is b for a, b in zip(after, before))
    assert "tolist" not in vars(torch.Tensor) and "propose" not in vars(drafter)
    assert "forward" not in vars(drafter.model) and drafter.model.forward == forward
    FakeBase().propose(lambda: X.tolist())
    assert len(c.steps) == 1
    with counter() as again:  # installable again; only one at a time
        with pytest.raises(RuntimeError, match="another HostSyncCounter"):
            counter().__enter__()
    assert again.steps == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_copies_and_host_tensors():
    dev = X.cuda()

    def draft():
        dev.cpu()                                    # one d2h (not also _to_copy)
        dev.to("cpu")                                # d2h through the dispatcher
        X.to("cuda")                                 # blocking h2d
        X.to("cuda", non_blocking=True)              # not blocking
        torch.tensor([1, 2])                         # a host tensor: free
        torch.tensor([1, 2], device="cuda")          # h2d of Python data
        X[1].item(), X.tolist()                      # host reads: free
        dev[1].item(), dev.tolist()
    with HostSyncCounter(targets=[(FakeBase, "propose")]) as c:
        FakeBase().propose(draft)
    assert c.steps[0]["by_kind"] == {"cpu": 1, "d2h_copy": 1, "h2d_copy": 1,
                                     "torch.tensor": 1, "item": 1, "tolist": 1}
