"""ViSpec's training losses."""

from __future__ import annotations

import itertools
import math

import torch

from vllm_vispec.train.losses import list_mle, stage1_loss, stage2_loss, top1_accuracy


def test_list_mle_is_the_plackett_luce_negative_log_likelihood():
    draft = torch.tensor([[2.0, 0.5, -1.0, 0.0]])
    target = torch.tensor([[0.0, 3.0, 1.0, 2.0]])  # order: 1, 3, 2 (k = 3)
    s = [0.5, 0.0, -1.0]
    expected = sum(math.log(sum(math.exp(x) for x in s[i:])) - s[i] for i in range(3))
    assert abs(list_mle(draft, target, k=3).item() - expected) < 1e-6


def test_list_mle_prefers_the_targets_order():
    target = torch.tensor([[4.0, 3.0, 2.0, 1.0]])
    losses = {perm: list_mle(torch.tensor([perm], dtype=torch.float), target, k=4).item()
              for perm in itertools.permutations([4.0, 3.0, 2.0, 1.0])}
    assert min(losses, key=losses.get) == (4.0, 3.0, 2.0, 1.0)


def test_losses_vanish_or_bottom_out_when_the_draft_is_the_target():
    g = torch.Generator().manual_seed(0)
    lm_head = torch.randn(20, 8, generator=g)
    target = torch.randn(5, 8, generator=g)
    other = torch.randn(5, 8, generator=g)
    # Stage 2's L1 term is zero at the target; its ListMLE term is the only remainder.
    same = stage2_loss(target, target, lm_head)
    assert torch.allclose(same, 0.1 * list_mle(target @ lm_head.T, target @ lm_head.T))
    assert (stage2_loss(other, target, lm_head) > same).all()
    assert (stage1_loss(other, target, lm_head) > stage1_loss(target, target, lm_head)).all()
    assert top1_accuracy(target, target, lm_head).mean() == 1.0


def test_losses_have_gradients_for_the_draft_only():
    lm_head = torch.randn(20, 8)
    draft = torch.randn(3, 8, requires_grad=True)
    stage2_loss(draft, torch.randn(3, 8), lm_head).mean().backward()
    assert draft.grad is not None and draft.grad.abs().sum() > 0
