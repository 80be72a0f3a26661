"""ViSpec's training losses (from the authors' training code).

Stage 1 (EAGLE on text): ``1.0 · SmoothL1(draft feature, target feature)
+ 0.1 · [softCE(target p, draft) + 0.1 · ListMLE@10]``.
Stage 2 (ViSpec): ``10 · mean ||softmax(draft logits) − softmax(target logits)||_1
+ 0.1 · ListMLE@10`` — all supervision from the target's own distribution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def list_mle(draft_logits: torch.Tensor, target_logits: torch.Tensor,
             k: int = 10) -> torch.Tensor:
    """Plackett-Luce loss of the draft's scores for the target's top-k tokens, in the
    target's order. [N, V] -> [N]."""
    top = target_logits.topk(min(k, target_logits.shape[-1]), dim=-1).indices
    scores = draft_logits.gather(-1, top)
    # -log P(order) = sum_i [logsumexp(scores[i:]) - scores[i]]
    tail_lse = torch.logcumsumexp(scores.flip(-1), dim=-1).flip(-1)
    return (tail_lse - scores).sum(-1)


def stage1_loss(draft_out: torch.Tensor, target_next: torch.Tensor,
                lm_head: torch.Tensor) -> torch.Tensor:
    """Per slot [N]: draft output vs the target's next feature (both [N, H])."""
    draft_logits, target_logits = draft_out @ lm_head.T, target_next @ lm_head.T
    feature = F.smooth_l1_loss(draft_out, target_next, reduction="none").mean(-1)
    soft_ce = -(target_logits.softmax(-1) * draft_logits.log_softmax(-1)).sum(-1)
    return 1.0 * feature + 0.1 * (soft_ce + 0.1 * list_mle(draft_logits, target_logits))


def stage2_loss(draft_out: torch.Tensor, target_next: torch.Tensor,
                lm_head: torch.Tensor) -> torch.Tensor:
    draft_logits, target_logits = draft_out @ lm_head.T, target_next @ lm_head.T
    l1 = (draft_logits.softmax(-1) - target_logits.softmax(-1)).abs().sum(-1)
    return 10.0 * l1 + 0.1 * list_mle(draft_logits, target_logits)


LOSSES = {1: stage1_loss, 2: stage2_loss}


def top1_accuracy(draft_out: torch.Tensor, target_next: torch.Tensor,
                  lm_head: torch.Tensor) -> torch.Tensor:
    return ((draft_out @ lm_head.T).argmax(-1) == (target_next @ lm_head.T).argmax(-1)).float()
