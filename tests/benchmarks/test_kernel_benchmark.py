"""The tree-attention benchmark compares like with like: its paper tree is the paper's
shape (4 levels, 29 nodes + the root) and its dense masked attention computes the same
rows as the tree kernel's reference."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from vllm_vispec.kernels.tree_attention import tree_paged_attention_ref
from vllm_vispec.tree.dynamic_tree import DraftTree


def _benchmark_module():
    # By path: the name "kernels" is also the top-level kernels package of the checkout.
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "kernels.py"
    spec = importlib.util.spec_from_file_location("kernel_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _benchmark_module()
MODELS, PAPER_TREE = bench.MODELS, bench.PAPER_TREE
dense_masked_attention, tree_batch = bench.dense_masked_attention, bench.tree_batch


def test_the_benchmarks_tree_is_the_papers_shape():
    tree = DraftTree(list(range(len(PAPER_TREE) - 1)), [p - 1 for p in PAPER_TREE[1:]])
    assert len(tree) == 29 and max(tree.depths()) == 4
    assert sum(1 for p in tree.parents if p == -1) == 8  # the root's top 8


def test_dense_masked_attention_computes_the_tree_rows():
    args = tree_batch(MODELS["qwen2.5-vl-7b"], context=100, batch=2, dtype=torch.float32,
                      device="cpu")
    want = tree_paged_attention_ref(**args)
    got = dense_masked_attention(**args, context=100, batch=2)
    assert (got - want).abs().max() < 1e-5
