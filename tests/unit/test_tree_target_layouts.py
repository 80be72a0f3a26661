"""Tree verification's target side on the KV caches of vLLM's CUDA backends: caches
allocated by vLLM's own layout and allocation code for FlashAttention, FlashInfer (Hopper
and Blackwell) and Triton attention under several ``VLLM_KV_CACHE_LAYOUT`` settings,
filled where each backend's own split puts K and V; the step's attention rows computed by
the Triton tree kernel (in Triton's interpreter here) and by the PyTorch reference, against
attention written out key by key from the original tensors; the accepted paths' K/V moved
in place; a cache whose layout is not the one read is refused."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from test_kv_layout import BLOCK, backend_class
from test_kv_layout import vllm_caches as kv_layout_caches

from vllm_vispec import kernel_dispatch
from vllm_vispec.kernel_dispatch import KERNELS_ENV
from vllm_vispec.tree import target_step
from vllm_vispec.tree.dynamic_tree import DraftTree
from vllm_vispec.tree.target_kv import target_kv_views
from vllm_vispec.tree.target_step import TreeStep

HEADS, KV_HEADS, HEAD_DIM, BLOCKS = 4, 2, 16, 12
TOL = 1e-5  # fp32: the same sums in another order
CASES = [(backend, setting) for backend in ("FLASH_ATTN", "FLASHINFER", "FLASHINFER@sm100",
                                            "TRITON_ATTN")
         for setting in (None, "NHD", "HND")]

# Request "a": a prompt chunk (no drafts); "b": root + a branching tree; "c": root + chain.
CONTEXT = {"a": 5, "b": 37, "c": 20}  # positions already cached (the root's position)
TREES = {"b": DraftTree([11, 12, 13, 14, 15], [-1, -1, 0, 2, 1]),
         "c": DraftTree.chain([21, 22])}
PREFILL = {"a": 3}  # scheduled tokens of a request without drafts


def vllm_caches(backend, setting, monkeypatch):
    """Both layers' caches as vLLM's engine resolves the layout and allocates them."""
    return kv_layout_caches(backend, setting, monkeypatch, heads=KV_HEADS,
                            head_size=HEAD_DIM, blocks=BLOCKS)[1]


def backend_split(kv_cache):
    """K and V as FlashAttention / FlashInfer / Triton attention split a layer's cache
    in their forward: ``kv_cache.transpose(1, 2).split(head_size, dim=-1)``."""
    return kv_cache.transpose(1, 2).split(HEAD_DIM, dim=-1)


class Scene:
    """One verification step: the requests' cached context and this step's tokens in a
    vLLM cache, the step's query/key/value, and the original tensors for the answer."""

    def __init__(self, kv_cache, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.req_ids = list(CONTEXT)
        perm = torch.randperm(BLOCKS, generator=g)
        self.block_table = torch.zeros(len(self.req_ids), 4, dtype=torch.int32)
        for r in range(len(self.req_ids)):
            self.block_table[r] = perm[4 * r:4 * r + 4]
        self.spec = {req: [-1] * len(tree) for req, tree in TREES.items()}
        counts = [len(self.spec.get(req, ())) + 1 if req in TREES else PREFILL[req]
                  for req in self.req_ids]
        self.query_start_loc = [0]
        for n in counts:
            self.query_start_loc.append(self.query_start_loc[-1] + n)
        self.num_tokens = self.query_start_loc[-1]
        # Scheduled positions: sequential after the context (vLLM's chain view).
        self.req_of_row = [r for r, n in enumerate(counts) for _ in range(n)]
        positions = [CONTEXT[self.req_ids[r]] + i for r, n in enumerate(counts)
                     for i in range(n)]
        self.positions = torch.tensor(positions)
        self.slot_mapping = torch.tensor(
            [int(self.block_table[r, p // BLOCK]) * BLOCK + p % BLOCK
             for r, p in zip(self.req_of_row, positions)])
        self.context_k = {req: torch.randn(CONTEXT[req], KV_HEADS, HEAD_DIM, generator=g)
                          for req in self.req_ids}
        self.context_v = {req: torch.randn(CONTEXT[req], KV_HEADS, HEAD_DIM, generator=g)
                          for req in self.req_ids}
        self.query = torch.randn(self.num_tokens, HEADS, HEAD_DIM, generator=g)
        self.key = torch.randn(self.num_tokens, KV_HEADS, HEAD_DIM, generator=g)
        self.value = torch.randn(self.num_tokens, KV_HEADS, HEAD_DIM, generator=g)
        # What vLLM's cache holds during the step: the context, then (written by the
        # backend's do_kv_cache_update before attention) this step's keys and values.
        key_cache, value_cache = backend_split(kv_cache)
        kv_cache.fill_(float("nan"))  # nothing else may be read
        for r, req in enumerate(self.req_ids):
            for p in range(CONTEXT[req]):
                block = int(self.block_table[r, p // BLOCK])
                key_cache[block, p % BLOCK] = self.context_k[req][p]
                value_cache[block, p % BLOCK] = self.context_v[req][p]
        slots = self.slot_mapping.long()
        key_cache[slots // BLOCK, slots % BLOCK] = self.key
        value_cache[slots // BLOCK, slots % BLOCK] = self.value

    def step(self) -> TreeStep:
        return TreeStep.build(self.spec, TREES, self.req_ids, self.query_start_loc,
                              self.positions.clone(), self.block_table, self.slot_mapping)

    def written_out(self, row: int) -> torch.Tensor:
        """Attention of one tree row over its request's context and its own path, walking
        parents (no ancestor masks, no cache)."""
        r = self.req_of_row[row]
        req = self.req_ids[r]
        root = self.query_start_loc[r + 1] - len(TREES[req]) - 1
        node = row - root - 1  # -1: the root
        path = []
        while node >= 0:
            path.append(root + 1 + node)
            node = TREES[req].parents[node]
        path.append(root)
        keys = torch.cat([self.context_k[req], self.key[path]])
        values = torch.cat([self.context_v[req], self.value[path]])
        group = HEADS // KV_HEADS
        out = torch.empty(HEADS, HEAD_DIM)
        for h in range(HEADS):
            scores = keys[:, h // group] @ self.query[row, h] * HEAD_DIM ** -0.5
            out[h] = scores.softmax(0) @ values[:, h // group]
        return out


@pytest.fixture(autouse=True)
def fresh_layout_checks(monkeypatch):
    monkeypatch.setattr(target_step, "_LAYOUTS_CHECKED", set())


@pytest.mark.parametrize("kernels", ["triton", "reference"])
@pytest.mark.parametrize("case,setting", CASES)
def test_tree_rows_attend_through_the_backends_cache(case, setting, kernels, monkeypatch):
    backend = backend_class(case, monkeypatch)
    name = backend.get_name()
    kv_cache, _ = vllm_caches(backend, setting, monkeypatch)
    scene = Scene(kv_cache)
    step = scene.step()
    output = torch.full((scene.num_tokens, HEADS * HEAD_DIM), 7.0)
    monkeypatch.setenv(KERNELS_ENV, kernels)
    launched = kernel_dispatch.launches["tree_attention.target"]
    step.attend(scene.query, scene.key, scene.value, kv_cache, name, None,
                HEAD_DIM ** -0.5, output)
    assert kernel_dispatch.launches["tree_attention.target"] - launched == (
        1 if kernels == "triton" else 0)
    out = output.view(scene.num_tokens, HEADS, HEAD_DIM)
    b = scene.req_ids.index("b")
    tree_rows = range(scene.query_start_loc[b + 1] - len(TREES["b"]) - 1,
                      scene.query_start_loc[b + 1])
    worst = max((out[row] - scene.written_out(row)).abs().max().item() for row in tree_rows)
    assert worst < TOL
    # Rows of requests without a branching tree keep the backend's own result.
    others = [row for row in range(scene.num_tokens) if row not in tree_rows]
    assert bool((out[others] == 7.0).all())


@pytest.mark.parametrize("case,setting", CASES)
def test_accepted_paths_move_in_the_backends_cache(case, setting, monkeypatch):
    backend = backend_class(case, monkeypatch)
    name = backend.get_name()
    kv_cache, other_layer = vllm_caches(backend, setting, monkeypatch)
    scene = Scene(kv_cache, seed=1)
    other_layer.copy_(torch.randn(other_layer.shape, generator=torch.Generator().manual_seed(2)))
    step = scene.step()
    # b accepts nodes 1 and 4 (its depth-1 and depth-2 places), c its first node.
    accepted = torch.full((3, 3), -1)
    accepted[1, :2] = torch.tensor([1, 4])
    accepted[2, 0] = 0
    step.walk = SimpleNamespace(accepted=accepted)
    views = [target_kv_views(cache, name) for cache in (kv_cache, other_layer)]
    before = [(k.clone(), v.clone()) for k, v in views]
    step.move_kv(views)
    root = scene.query_start_loc[2] - len(TREES["b"]) - 1
    slots = scene.slot_mapping.long()
    for (key_cache, value_cache), (key_before, value_before) in zip(views, before):
        want_k, want_v = key_before.clone(), value_before.clone()
        for depth, node in ((1, 1), (2, 4)):
            dst, src = slots[root + depth], slots[root + 1 + node]
            want_k[dst // BLOCK, dst % BLOCK] = key_before[src // BLOCK, src % BLOCK]
            want_v[dst // BLOCK, dst % BLOCK] = value_before[src // BLOCK, src % BLOCK]
        assert torch.equal(key_cache.nan_to_num(-1.0), want_k.nan_to_num(-1.0))
        assert torch.equal(value_cache.nan_to_num(-1.0), want_v.nan_to_num(-1.0))


def test_a_cache_laid_out_otherwise_is_refused(monkeypatch):
    backend = backend_class("FLASH_ATTN", monkeypatch)
    kv_cache, _ = vllm_caches(backend, None, monkeypatch)
    scene = Scene(kv_cache)
    # The same bytes read with the CPU backend's split (keys, then values per block and
    # head) are not the keys FlashAttention's split wrote.
    with pytest.raises(RuntimeError, match="not laid out as this version reads it"):
        scene.step().attend(scene.query, scene.key, scene.value,
                            kv_cache.contiguous(), "CPU_ATTN", "vec", HEAD_DIM ** -0.5,
                            torch.zeros(scene.num_tokens, HEADS * HEAD_DIM))


def test_unknown_backend_is_refused_with_the_supported_ones():
    with pytest.raises(NotImplementedError, match="FLASH_ATTN, FLASHINFER, TRITON_ATTN"):
        target_kv_views(torch.zeros(2, KV_HEADS, BLOCK, 2 * HEAD_DIM), "FLEX_ATTENTION")
