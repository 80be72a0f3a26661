"""The one place that decides, per call, whether a Triton kernel or its PyTorch reference
runs: the draft's compressed-layout attention, its image compression, and tree attention
(the draft's tree levels and the target's tree verification).

The setting ``VLLM_VISPEC_KERNELS`` (read at every call, in whichever process runs the
model, so it reaches vLLM's worker processes like any environment variable):

- ``auto`` (default): the kernel on CUDA when Triton is installed and the kernel takes the
  tensors' shapes and strides; PyTorch otherwise (always on CPU): for the draft's attention
  its one-gather batched path, for the rest the references.
- ``triton``: the kernels everywhere. On CUDA the compiled kernels; on CPU the same kernels
  in Triton's interpreter, so that the code that runs on GPUs runs inside vLLM end to end
  (slow: for tests). Never falls back: a call the kernel cannot take (no Triton, a head
  size that is not a power of two >= 16, a cache whose head dimension is not contiguous,
  another device) raises :class:`KernelUnavailable`.
- ``reference``: the PyTorch references everywhere (e.g. to compare on a GPU; the
  draft's attention then runs its per-request reference, not the batched path).

How the interpreter is confined to our kernels. Triton chooses interpreter or compiler
per function, when ``@triton.jit`` runs (``triton.runtime.jit.jit`` reads
``knobs.runtime.interpret``, i.e. ``TRITON_INTERPRET``, at decoration); there is no
per-call option. An interpreted kernel calls the ``@triton.jit`` functions it reaches by
name as plain Python, and a compiled-mode one refuses ("Cannot call @triton.jit'd outside
of the scope of a kernel"). Two sets of them matter:

- ours (``kernels/_paged.py``'s helpers, the kernels): on CPU this module loads a second,
  private copy of the kernels package (``vllm_vispec._interpreted_kernels``) with the
  interpret knob set in Triton alone (``knobs.propagate_env`` off: ``os.environ`` never
  holds ``TRITON_INTERPRET``) and restored right after;
- Triton's own library (``tl.zeros``, ``tl.sum``, ``tl.max`` and their combine functions
  in ``triton.language.standard``): decorated when ``triton`` is imported, which vLLM does
  at start-up (``vllm.triton_utils`` probes ``triton.backends``), so setting the variable
  "before our import" is too late for them. For the duration of each interpreted launch
  only, the ``triton.language`` modules' ``@triton.jit`` functions are swapped for
  interpreted twins (one per function, so the interpreter's identity checks such as
  ``combine_fn is tl.standard._sum_combine`` hold), and put back after.

The regular ``vllm_vispec.kernels`` and every other Triton function in the process (vLLM's)
stay as they were, whatever was imported first, offline or served. (Setting
``TRITON_INTERPRET=1`` for a whole vLLM process would turn every Triton function defined
after it into an interpreted one. On the CPU build of vLLM 0.32 it would not change
``vllm.triton_utils.HAS_TRITON``, which is False there either way because this Triton has
no CPU backend, nor the model-runner choice in ``VllmConfig.use_v2_model_runner`` that
depends on it; the confinement avoids relying on that. The swap is process-wide while a
launch runs, as the interpreter's own patching of ``triton.language`` is: nothing else in
a CPU vLLM process runs Triton.)

``launches`` counts kernel launches (not reference calls) by name, so tests can tell that
each kernel really ran inside the engine.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import os
import sys
import threading
from collections import Counter
from contextlib import contextmanager
from types import ModuleType

import torch

logger = logging.getLogger(__name__)

KERNELS_ENV = "VLLM_VISPEC_KERNELS"
MODES = ("auto", "triton", "reference")
INTERPRETED_PACKAGE = "vllm_vispec._interpreted_kernels"
KERNEL_MODULES = ("compressed_attention", "image_compression", "tree_attention")

# Kernel launches by name ("compressed_attention", "image_compression",
# "tree_attention.draft", "tree_attention.target").
launches: Counter[str] = Counter()

_interpreted: dict[str, ModuleType] = {}
_load_lock = threading.Lock()


class KernelUnavailable(RuntimeError):
    """VLLM_VISPEC_KERNELS=triton, but a kernel cannot serve this call."""


def mode() -> str:
    value = os.environ.get(KERNELS_ENV, "auto").strip().lower() or "auto"
    if value not in MODES:
        raise ValueError(f"{KERNELS_ENV}={value!r}: expected one of {', '.join(MODES)}")
    return value


def wants_kernel(tensor: torch.Tensor) -> bool:
    """Whether calls on ``tensor``'s device go to a kernel under the current setting (the
    kernel may still be refused for shapes: then ``auto`` falls back, ``triton`` raises)."""
    current = mode()
    return current == "triton" or (current == "auto" and tensor.is_cuda)


@functools.cache
def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def _layout_problems(**tensors: torch.Tensor) -> list[str]:
    """What the paged-attention kernels cannot take: they load ``head_dim`` elements contiguously with one ``tl.arange``."""
    problems = []
    head_dim = tensors["query"].shape[-1]
    if head_dim & (head_dim - 1) or head_dim < 16:
        problems.append(f"head_dim {head_dim} is not a power of two >= 16")
    for name, t in tensors.items():
        if t.stride(-1) != 1:
            problems.append(f"{name} {tuple(t.shape)} has stride {t.stride(-1)} in its "
                            "head dimension (must be 1)")
    return problems


def _kernels(name: str, tensor: torch.Tensor, problems: list[str]) -> ModuleType | None:
    """The kernels module to launch ``name`` from, or None for the PyTorch reference."""
    current = mode()
    if current == "reference" or (current == "auto" and not tensor.is_cuda):
        return None
    if tensor.device.type not in ("cuda", "cpu"):
        problems = problems + [f"tensors on {tensor.device}, not CUDA or CPU"]
    if not _triton_installed():
        problems = problems + ["Triton is not installed"]
    if problems:
        if current == "auto":
            return None
        raise KernelUnavailable(
            f"{KERNELS_ENV}=triton, but the {name} kernel cannot run this call: "
            + "; ".join(problems))
    if tensor.is_cuda:
        return importlib.import_module(f"vllm_vispec.kernels.{name}")
    return _interpreted_module(name)


def _launch(module: ModuleType, function: str, *args, **kwargs):
    if module.__name__.startswith(INTERPRETED_PACKAGE):
        with _interpreted_triton_library():
            return getattr(module, function)(*args, **kwargs)
    return getattr(module, function)(*args, **kwargs)


def _interpreted_module(name: str) -> ModuleType:
    if not _interpreted:
        with _load_lock:
            if not _interpreted:
                _interpreted.update(_load_interpreted_kernels())
    return _interpreted[name]


@contextmanager
def _interpret_new_triton_functions():
    """``@triton.jit`` makes interpreted functions inside this block only, without
    touching ``os.environ``."""
    from triton import knobs
    had_override = "interpret" in knobs.runtime.__dict__
    saved = knobs.runtime.__dict__.get("interpret")
    saved_propagate = knobs.propagate_env
    knobs.propagate_env = False
    try:
        knobs.runtime.interpret = True
        yield
    finally:
        if had_override:
            knobs.runtime.interpret = saved
        else:
            del knobs.runtime.interpret
        knobs.propagate_env = saved_propagate


_library_twins: dict[int, object] = {}


@contextmanager
def _interpreted_triton_library():
    """``triton.language``'s ``@triton.jit`` functions as interpreted twins, for one
    interpreted launch."""
    # Imported by argument specialisation on first use; it asserts that the library
    # functions it wraps are compiled-mode ones, so it must be loaded before the swap.
    import triton.experimental.gluon  # noqa: F401
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction
    swapped = []
    for name, module in list(sys.modules.items()):
        if module is None or not (name == "triton.language"
                                  or name.startswith("triton.language.")):
            continue
        for attr, value in list(vars(module).items()):
            if isinstance(value, JITFunction):
                twin = _library_twins.get(id(value))
                if twin is None:
                    twin = _library_twins[id(value)] = InterpretedFunction(value.fn)
                setattr(module, attr, twin)
                swapped.append((module, attr, value))
    try:
        yield
    finally:
        for module, attr, value in reversed(swapped):
            setattr(module, attr, value)


def _load_interpreted_kernels() -> dict[str, ModuleType]:
    from . import kernels
    spec = importlib.util.spec_from_file_location(
        INTERPRETED_PACKAGE, kernels.__file__,
        submodule_search_locations=list(kernels.__path__))
    package = importlib.util.module_from_spec(spec)
    with _interpret_new_triton_functions():
        sys.modules[INTERPRETED_PACKAGE] = package
        spec.loader.exec_module(package)
        modules = {name: importlib.import_module(f"{INTERPRETED_PACKAGE}.{name}")
                   for name in KERNEL_MODULES}
    logger.warning("vispec: %s=triton on CPU: the Triton kernels run in Triton's "
                   "interpreter (slow; for tests)", KERNELS_ENV)
    return modules


# ---- the dispatch points ------------------------------------------------------------------

def compressed_paged_attention(query, key_cache, value_cache, block_table, token_req,
                               query_positions, kept_starts, kept_ends, cu_kept,
                               scale: float, padded=None) -> torch.Tensor:
    """The draft's attention over its compressed layout (kernels/compressed_attention.py).
    ``padded`` (kept blocks, offsets and positions per request, query rows, longest
    query, whether a query may see nothing) enables the one-gather PyTorch path, which ``auto`` takes off CUDA."""
    args = (query, key_cache, value_cache, block_table, token_req, query_positions,
            kept_starts, kept_ends, cu_kept, scale)
    module = _kernels("compressed_attention", query,
                      _layout_problems(query=query, key_cache=key_cache,
                                       value_cache=value_cache))
    if module is None:
        from .kernels import compressed_attention as torch_paths
        if padded is not None and mode() == "auto":
            blocks, offsets, positions, query_rows, max_query_len, blind_rows = padded
            return torch_paths.compressed_paged_attention_padded(
                query, key_cache, value_cache, blocks, offsets, positions, query_rows,
                query_positions, max_query_len, scale, blind_rows)
        return torch_paths.compressed_paged_attention_ref(*args)
    launches["compressed_attention"] += 1
    return _launch(module, "compressed_paged_attention_triton", *args)


def tree_paged_attention(query, key_cache, value_cache, block_table, token_req,
                         kept_starts, kept_ends, cu_kept, tree_key, tree_value, tree_start,
                         tree_len, anc_bits, *, scale: float, site: str) -> torch.Tensor:
    """Tree attention (kernels/tree_attention.py); ``site`` ("draft" or "target") names
    the caller in :data:`launches`."""
    args = (query, key_cache, value_cache, block_table, token_req, kept_starts, kept_ends,
            cu_kept, tree_key, tree_value, tree_start, tree_len, anc_bits)
    module = _kernels("tree_attention", query,
                      _layout_problems(query=query, key_cache=key_cache,
                                       value_cache=value_cache, tree_key=tree_key,
                                       tree_value=tree_value))
    if module is None:
        from .kernels.tree_attention import tree_paged_attention_ref
        return tree_paged_attention_ref(*args, scale=scale)
    launches[f"tree_attention.{site}"] += 1
    return _launch(module, "tree_paged_attention_triton", *args, scale=scale)


def use_image_kernel(image_embeds: torch.Tensor) -> bool:
    """Whether the image adaptor runs through the fused image-compression kernel."""
    return _kernels("image_compression", image_embeds, []) is not None


def pool_images(folded: torch.Tensor, embeds: torch.Tensor, cu_seqlens: torch.Tensor,
                max_tokens: int) -> torch.Tensor:
    """The fused kernel's pooled rows (kernels/image_compression.py); call it where
    :func:`use_image_kernel` said yes."""
    module = _kernels("image_compression", embeds, [])
    if module is None:
        raise KernelUnavailable(f"the image-compression kernel does not run under "
                                f"{KERNELS_ENV}={mode()} on {embeds.device}")
    launches["image_compression"] += 1
    return _launch(module, "pool_images_triton", folded, embeds, cu_seqlens, max_tokens)


def token_major_blocks(key_cache: torch.Tensor, value_cache: torch.Tensor,
                       block_table: torch.Tensor):
    """The blocks ``block_table`` names, copied so the head dimension is contiguous, and
    the table renumbered to them: for caches the kernels cannot read in place (vLLM's CPU
    backend stores keys dimension-major). Returns (key_cache, value_cache, block_table)."""
    used, renumbered = torch.unique(block_table, return_inverse=True)
    used = used.long()
    return (key_cache[used].contiguous(), value_cache[used].contiguous(),
            renumbered.to(block_table.dtype))
