"""Counting host-device synchronisations inside speculative-decoding draft passes.

``HostSyncCounter`` wraps the method that runs the draft passes (vLLM's
``SpecDecodeBaseProposer.propose`` by default; the target is injectable) and, during each
call, counts what makes the host wait for the device:

- aten ops seen by a ``TorchDispatchMode``: ``_local_scalar_dense`` (``item()``, ``bool()``,
  ``int()`` of a tensor), ``nonzero``, ``masked_select``, ``masked_scatter``, boolean-mask
  ``index`` / ``index_put_``, ``repeat_interleave`` without ``output_size``, ``unique*``,
  ``equal``, ``is_nonzero``, copies from the device to the CPU and blocking copies from the
  CPU to the device;
- Python-level calls that do not always reach the dispatcher: ``Tensor.tolist``,
  ``Tensor.numpy``, ``Tensor.cpu``, ``Tensor.__array__``, ``torch.tensor`` and
  ``torch.as_tensor`` of Python data (a blocking host-to-device copy on CUDA). Ops that run
  inside one of these are not counted again.

On CUDA an event counts when the tensor it reads is on the device. On the CPU build every
tensor is on the CPU, so the counter treats the CPU as the device (``cpu_is_device``) and
tracks which tensors are host data: vLLM's CPU mirrors (``*_cpu`` attributes of the
attention metadata passed in), tensors made from Python data, results of ``.cpu()``, and
whatever is computed from host data only. Reads of those are free and do not count. The
CPU count is then an estimate of the CUDA count (``.to(device)`` is a no-op on the CPU, so
the Python data's trip to the device is counted where the tensor is made).

It also times each step: the wall time of the drafter's own ``propose`` (host time in the
proposer) and of the draft model's ``forward`` calls inside it. Counting routes every aten
op through Python, so time with ``count=False`` and count in a separate run.

    counter = HostSyncCounter(drafter_of(llm))
    with counter:
        llm.generate(...)
    counter.steps   # per propose call: syncs, by_kind, where, host_reads, host_s, forward_s

``where`` is file:line (function) of the first frame outside torch and this module;
``host_reads`` lists the same reads of host data, which were not counted.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
import time
from collections import Counter
from typing import Any

_MISSING = object()
_HERE = os.path.abspath(__file__)
_REPO = os.path.dirname(os.path.dirname(_HERE))

# Python-level wraps: (owner, attribute, kind); owners are resolved when installing.
_TENSOR_METHODS = (("tolist", "tolist"), ("numpy", "numpy"), ("cpu", "cpu"),
                   ("__array__", "__array__"))
_TORCH_FACTORIES = (("tensor", "torch.tensor"), ("as_tensor", "torch.as_tensor"))

# aten op name -> kind, for ops that read their first tensor argument on the host.
_READS_INPUT = {"_local_scalar_dense": "item", "is_nonzero": "item", "nonzero": "nonzero",
                "_unique": "unique", "_unique2": "unique", "unique_dim": "unique",
                "unique_consecutive": "unique", "equal": "equal"}
_MASK_INDEX = ("index", "index_put_", "index_put", "_index_put_impl_")


def drafter_of(llm) -> Any:
    """The drafter of an offline ``LLM`` whose engine runs in this process
    (``VLLM_ENABLE_V1_MULTIPROCESSING=0``)."""
    return llm.llm_engine.model_executor.driver_worker.worker.model_runner.drafter


def default_target() -> tuple[type, str]:
    from vllm.v1.spec_decode.llm_base_proposer import SpecDecodeBaseProposer
    return SpecDecodeBaseProposer, "propose"


class _Patch:
    """Sets ``owner.name`` and puts back exactly what was there (or nothing)."""

    def __init__(self, owner, name: str, value) -> None:
        self.owner, self.name = owner, name
        self.saved = vars(owner).get(name, _MISSING) if hasattr(owner, "__dict__") else _MISSING
        setattr(owner, name, value)

    def undo(self) -> None:
        if self.saved is _MISSING:
            delattr(self.owner, self.name)
        else:
            setattr(self.owner, self.name, self.saved)


class _State(threading.local):
    """Per thread: the open step and how deep in wrapped calls it is."""

    def __init__(self) -> None:
        self.step: dict | None = None
        self.step_depth = 0    # outermost step/sync wrapper opens and closes the step
        self.sync_depth = 0    # > 0: inside the counted region
        self.quiet = 0         # > 0: inside a Python-level wrap (it counts itself)
        self.host: dict[int, Any] = {}   # id -> tensor known to hold host data (CPU build)
        self.mirrors: list[tuple[Any, str]] = []  # (metadata, attribute) of CPU mirrors


@functools.lru_cache(maxsize=1)
def _torch_dir() -> str:
    import torch
    return os.path.dirname(os.path.abspath(torch.__file__)) + os.sep


def _location() -> str:
    """file:line (function) of the first frame outside torch and this module."""
    torch_dir = _torch_dir()
    frame = sys._getframe(1)
    while frame is not None:
        path = os.path.abspath(frame.f_code.co_filename)
        if path != _HERE and not path.startswith(torch_dir):
            return f"{_short(path)}:{frame.f_lineno} ({frame.f_code.co_name})"
        frame = frame.f_back
    return "?"


def _short(path: str) -> str:
    marker = os.sep + "site-packages" + os.sep
    if marker in path:
        return path.split(marker, 1)[1]
    if path.startswith(_REPO + os.sep):
        return os.path.relpath(path, _REPO)
    return path


class HostSyncCounter:
    """Counts host-device syncs per draft step while installed (a context manager).

    ``drafter``: a proposer instance; its own ``propose`` bounds a step and is timed (host
    time), and its ``model.forward`` is timed (draft-pass time). ``targets``: the
    ``(class, method)`` pairs whose calls are the counted region (default vLLM's
    ``SpecDecodeBaseProposer.propose``). ``count=False`` times only. ``cpu_is_device``:
    treat CPU tensors as device tensors (default: when the drafter's device, or with no
    drafter this machine, has no CUDA).
    """

    _active: "HostSyncCounter | None" = None  # one installed at a time: the wraps are global

    def __init__(self, drafter=None, *, targets=None, count: bool = True,
                 cpu_is_device: bool | None = None, keep_events: bool = True) -> None:
        self.drafter = drafter
        self.targets = list(targets) if targets is not None else None
        self.count = count
        self.cpu_is_device = cpu_is_device
        self.keep_events = keep_events
        self.steps: list[dict] = []
        self._lock = threading.Lock()
        self._local = _State()
        self._patches: list[_Patch] = []
        self._mode_cls = None

    # ---- results -------------------------------------------------------------------------
    @property
    def total(self) -> int:
        return sum(s["syncs"] for s in self.steps)

    def reset(self) -> None:
        with self._lock:
            self.steps = []

    def summary(self, steps: list[dict] | None = None, top: int = 5) -> dict:
        """Syncs and times over ``steps`` (default all): max/mean syncs, kinds, top
        locations, median/mean host and forward seconds."""
        import statistics
        steps = self.steps if steps is None else steps
        syncs = [s["syncs"] for s in steps]
        kinds, where = Counter(), Counter()
        for s in steps:
            kinds.update(s["by_kind"])
            where.update(s["where"])

        def stat(key):
            values = [s[key] for s in steps if s[key] is not None]
            return ({"median": statistics.median(values), "mean": statistics.fmean(values)}
                    if values else {"median": None, "mean": None})
        return {"steps": len(steps), "syncs_total": sum(syncs),
                "syncs_max": max(syncs, default=0),
                "syncs_mean": statistics.fmean(syncs) if syncs else 0.0,
                "by_kind": dict(kinds.most_common()),
                "top_locations": [{"where": w, "count": n} for w, n in where.most_common(top)],
                "host_s": stat("host_s"), "forward_s": stat("forward_s")}

    # ---- install / remove ----------------------------------------------------------------
    def __enter__(self) -> "HostSyncCounter":
        import torch
        if HostSyncCounter._active is not None:
            raise RuntimeError("another HostSyncCounter is installed")
        if self.cpu_is_device is None:
            device = getattr(self.drafter, "device", None)
            self.cpu_is_device = (torch.device(device).type == "cpu" if device is not None
                                  else not torch.cuda.is_available())
        targets = self.targets if self.targets is not None else [default_target()]
        try:
            for owner, name in targets:
                self._patches.append(_Patch(owner, name, self._wrap_region(
                    getattr(owner, name))))
            if self.drafter is not None:
                self._patches.append(_Patch(self.drafter, "propose",
                                            self._wrap_step(self.drafter.propose)))
                model = getattr(self.drafter, "model", None)
                if model is not None:
                    self._patches.append(_Patch(model, "forward",
                                                self._wrap_forward(model.forward)))
            if self.count:
                for name, kind in _TENSOR_METHODS:
                    self._patches.append(_Patch(torch.Tensor, name, self._wrap_tensor_method(
                        getattr(torch.Tensor, name), kind)))
                for name, kind in _TORCH_FACTORIES:
                    self._patches.append(_Patch(torch, name, self._wrap_factory(
                        getattr(torch, name), kind)))
        except BaseException:
            self._undo()
            raise
        HostSyncCounter._active = self
        return self

    def __exit__(self, *exc) -> None:
        self._undo()
        HostSyncCounter._active = None

    def _undo(self) -> None:
        while self._patches:
            self._patches.pop().undo()

    # ---- steps ---------------------------------------------------------------------------
    def _open(self, args, kwargs, sig=None) -> bool:
        st = self._local
        st.step_depth += 1
        if st.step_depth > 1:
            return False
        st.step = {"syncs": 0, "by_kind": {}, "where": {}, "events": [], "host_reads": {},
                   "host_s": None, "forward_s": 0.0, "forward_calls": 0, "num_reqs": None}
        self._scan_metadata(args, kwargs, sig)
        return True

    def _close(self, started: float) -> None:
        st = self._local
        st.step_depth -= 1
        if st.step_depth:
            return
        step, st.step = st.step, None
        st.host, st.mirrors = {}, []
        step["host_s"] = time.perf_counter() - started
        if not self.keep_events:
            del step["events"]
        with self._lock:
            self.steps.append(step)

    def _scan_metadata(self, args, kwargs, sig=None) -> None:
        """Batch size and host data among the arguments: the CPU mirrors of the attention
        metadata, and the image-token mask vLLM keeps on the CPU (``mm_embed_inputs``)."""
        import torch
        st = self._local
        values = list(args) + list(kwargs.values())
        for value in values:
            if not hasattr(value, "query_start_loc_cpu"):
                continue
            if st.step["num_reqs"] is None:
                st.step["num_reqs"] = getattr(value, "num_reqs", None)
            tensors = {n: v for n, v in vars(value).items() if isinstance(v, torch.Tensor)}
            on_device = {id(v) for n, v in tensors.items() if "_cpu" not in n}
            # On the CPU build a mirror can be the device tensor itself: then it is not host.
            st.mirrors += [(value, n) for n, v in tensors.items()
                           if "_cpu" in n and id(v) not in on_device]
        if sig is not None and self.cpu_is_device:
            try:
                mm = sig.bind_partial(*args, **kwargs).arguments.get("mm_embed_inputs")
            except TypeError:
                mm = None
            if isinstance(mm, tuple) and len(mm) == 2:
                self._mark_host(mm[1])

    def _wrap_step(self, fn):
        sig = _signature(fn)

        @functools.wraps(fn)
        def step(*args, **kwargs):
            started = time.perf_counter()
            self._open(args, kwargs, sig)
            try:
                return fn(*args, **kwargs)
            finally:
                self._close(started)
        return step

    def _wrap_region(self, fn):
        counter = self
        sig = _signature(fn)

        @functools.wraps(fn)
        def region(*args, **kwargs):
            st = counter._local
            if st.sync_depth:  # nested (a subclass's propose calling super()): count once
                return fn(*args, **kwargs)
            started = time.perf_counter()
            if not counter._open(args, kwargs, sig):
                counter._scan_metadata(args, kwargs, sig)  # the arguments passed on inside
            st.sync_depth += 1
            try:
                if not counter.count:
                    return fn(*args, **kwargs)
                with counter._mode():
                    return fn(*args, **kwargs)
            finally:
                st.sync_depth -= 1
                counter._close(started)
        return region

    def _wrap_forward(self, fn):
        @functools.wraps(fn)
        def forward(*args, **kwargs):
            step = self._local.step
            if step is None:
                return fn(*args, **kwargs)
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                step["forward_s"] += time.perf_counter() - started
                step["forward_calls"] += 1
        return forward

    # ---- events --------------------------------------------------------------------------
    def _counting(self) -> bool:
        st = self._local
        return st.sync_depth > 0 and not st.quiet and st.step is not None

    def _record(self, kind: str, host: bool = False) -> None:
        """Counts a sync; ``host``: the same read of host data, free (kept apart)."""
        step = self._local.step
        where = _location()
        if host:
            key = f"{kind} {where}"
            step["host_reads"][key] = step["host_reads"].get(key, 0) + 1
            return
        step["syncs"] += 1
        step["by_kind"][kind] = step["by_kind"].get(kind, 0) + 1
        step["where"][where] = step["where"].get(where, 0) + 1
        if self.keep_events:
            step["events"].append((kind, where))

    def _is_host(self, t) -> bool:
        """Holds host data: on the CPU under CUDA; on the CPU build, a known host tensor."""
        if t.device.type != "cpu":
            return False
        if not self.cpu_is_device:
            return True
        st = self._local
        if id(t) in st.host:
            return True
        return any(getattr(meta, name, None) is t for meta, name in st.mirrors)

    def _mark_host(self, t) -> None:
        import torch
        if self.cpu_is_device and isinstance(t, torch.Tensor):
            self._local.host[id(t)] = t  # kept alive for the step, so the id stays unique

    def _wrap_tensor_method(self, fn, kind: str):
        counter = self

        @functools.wraps(fn)
        def method(t, *args, **kwargs):
            if not counter._counting():
                return fn(t, *args, **kwargs)
            on_device = not counter._is_host(t)
            counter._local.quiet += 1
            try:
                out = fn(t, *args, **kwargs)
            finally:
                counter._local.quiet -= 1
            counter._record(kind, host=not on_device)
            if kind == "cpu":
                counter._mark_host(out)
            return out
        return method

    def _wrap_factory(self, fn, kind: str):
        import torch
        counter = self

        @functools.wraps(fn)
        def factory(*args, **kwargs):
            if not counter._counting():
                return fn(*args, **kwargs)
            data = args[0] if args else kwargs.get("data")
            counter._local.quiet += 1
            try:
                out = fn(*args, **kwargs)
            finally:
                counter._local.quiet -= 1
            if isinstance(data, torch.Tensor):
                if data.device.type == "cpu" and out.device.type != "cpu":
                    counter._record("h2d_copy")
                return out
            if (counter.cpu_is_device or out.device.type != "cpu"
                    or _holds_device_tensor(data)):
                counter._record(kind)
            counter._mark_host(out)
            return out
        return factory

    def _mode(self):
        if self._mode_cls is None:
            self._mode_cls = _make_mode_class()
        return self._mode_cls(self)

    def _on_op(self, func, args, kwargs, out) -> None:
        """Counts a blocking op; on the CPU build, marks outputs computed from host data."""
        if self._counting():
            found = _classify(func, args, kwargs)
            if found is not None:
                kind, tensor = found
                self._record(kind, host=tensor is not None and self._is_host(tensor))
        if self.cpu_is_device:
            self._propagate(args, kwargs, out)

    def _propagate(self, args, kwargs, out) -> None:
        import torch
        from torch.utils._pytree import tree_leaves
        inputs = [a for a in tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
        host = bool(inputs) and all(self._is_host(a) for a in inputs)
        for o in tree_leaves(out):
            if not isinstance(o, torch.Tensor):
                continue
            if host:
                self._mark_host(o)
            else:  # written or made from device data (in-place ops return their input)
                self._local.host.pop(id(o), None)


def _signature(fn):
    import inspect
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):
        return None


def _holds_device_tensor(data, depth: int = 3) -> bool:
    import torch
    if isinstance(data, torch.Tensor):
        return data.device.type != "cpu"
    if depth and isinstance(data, (list, tuple)):
        return any(_holds_device_tensor(x, depth - 1) for x in data)
    return False


def _classify(func, args, kwargs):
    """(kind, tensor read on the host or None) of a blocking aten op, else None."""
    import torch
    name = func.overloadpacket.__name__
    if name in _READS_INPUT:
        return _READS_INPUT[name], args[0]
    if name == "masked_select":
        return "masked_select", args[1]
    if name == "masked_scatter":
        return "masked_scatter", args[1]
    if name in _MASK_INDEX:
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        for index in indices or ():
            if isinstance(index, torch.Tensor) and index.dtype in (torch.bool, torch.uint8):
                return "bool_index", index
        return None
    if name == "repeat_interleave":
        overload = func._overloadname
        if overload == "Tensor":  # repeat_interleave(repeats, *, output_size)
            repeats, size = args[0], kwargs.get("output_size")
        elif overload == "self_Tensor":
            repeats = args[1]
            size = args[3] if len(args) > 3 else kwargs.get("output_size")
        else:
            return None
        return None if size is not None else ("repeat_interleave", repeats)
    if name == "_to_copy":
        src, dst = args[0], kwargs.get("device")
        return _copy_kind(src.device, torch.device(dst) if dst is not None else src.device,
                          kwargs.get("non_blocking", False))
    if name == "copy_":
        dst, src = args[0], args[1]
        non_blocking = args[2] if len(args) > 2 else kwargs.get("non_blocking", False)
        return _copy_kind(src.device, dst.device, non_blocking)
    return None


def _copy_kind(src, dst, non_blocking: bool):
    if src.type != "cpu" and dst.type == "cpu":
        return "d2h_copy", None
    if src.type == "cpu" and dst.type != "cpu" and not non_blocking:
        return "h2d_copy", None
    return None


def _make_mode_class():
    from torch.utils._python_dispatch import TorchDispatchMode

    class _SyncMode(TorchDispatchMode):
        def __init__(self, counter: HostSyncCounter) -> None:
            super().__init__()
            self.counter = counter

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            self.counter._on_op(func, args, kwargs, out)
            return out

    return _SyncMode
