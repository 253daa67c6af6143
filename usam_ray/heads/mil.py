"""U-SAM's mask classifier and its losses: multiple-instance learning and uncertainty distillation.

Pure torch, no Ray. Shapes: a batch holds B images ("bags"), each with up to d masks
("instances"): ``logits`` (B, d, C), ``valid`` (B, d) bool (False for padding), ``labels`` (B, C)
multi-hot {0, 1} image labels.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class MaskClassifier(nn.Module):
    """θ: a 4-layer MLP from a mask-token embedding to class logits.

    Args:
        in_dim (int): embedding width (1024 for SAM: 4 mask tokens × 256).
        num_classes (int): C.
        hidden (int): width of the three hidden layers.
        dropout (float): dropout after each hidden layer.
    """

    def __init__(self, in_dim: int, num_classes: int, hidden: int = 512, dropout: float = 0.1) -> None:
        super().__init__()
        self.args = {"in_dim": in_dim, "num_classes": num_classes, "hidden": hidden, "dropout": dropout}
        layers: list[nn.Module] = [nn.LayerNorm(in_dim)]
        width = in_dim
        for _ in range(3):
            layers += [nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout)]
            width = hidden
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(..., in_dim) float → (..., C) logits."""
        return self.net(tokens)


def topk_count(num_masks: torch.Tensor, a: float) -> torch.Tensor:
    """k = max(1, ⌈d / a⌉) per bag, for d = ``num_masks`` (B,) int."""
    return torch.clamp(torch.ceil(num_masks.float() / a), min=1).long()


def bag_scores(logits: torch.Tensor, valid: torch.Tensor, a: float) -> torch.Tensor:
    """Per-bag class scores: for each class, the mean of its top-k instance logits over the bag's
    valid masks, k = max(1, ⌈d/a⌉) with d the bag's number of valid masks.

    Returns:
        (B, C) scores (logits, before the softmax over classes).
    """
    b, d, c = logits.shape
    masked = logits.masked_fill(~valid[..., None], float("-inf"))
    ordered = masked.sort(dim=1, descending=True).values  # (B, d, C)
    k = topk_count(valid.sum(1), a)  # (B,)
    take = (torch.arange(d, device=logits.device)[None, :] < k[:, None]).float()  # (B, d)
    ordered = torch.where(take[..., None] > 0, ordered, torch.zeros_like(ordered))
    return ordered.sum(1) / k[:, None].float()


def mil_loss(logits: torch.Tensor, valid: torch.Tensor, labels: torch.Tensor, a: float) -> torch.Tensor:
    """L_MIL: cross-entropy between softmax(bag scores) and the normalised multi-hot label, mean over bags."""
    scores = bag_scores(logits, valid, a)
    target = labels.float() / labels.float().sum(1, keepdim=True).clamp(min=1)
    return -(target * F.log_softmax(scores, dim=1)).sum(1).mean()


def bad_masks(teacher_logits: torch.Tensor, valid: torch.Tensor, labels: torch.Tensor, tau: float) -> torch.Tensor:
    """The bad set B of uncertainty distillation: masks whose teacher entropy H exceeds τ, plus
    confident masks (H ≤ τ) whose teacher argmax is not among the image's labels.

    Returns:
        (B, d) bool, False on padding.
    """
    p = teacher_logits.softmax(-1)
    entropy = -(p * p.clamp(min=1e-12).log()).sum(-1)
    argmax = teacher_logits.argmax(-1)  # (B, d)
    in_label = labels.bool().gather(1, argmax)
    return valid & ((entropy > tau) | ((entropy <= tau) & ~in_label))


def uncertainty_loss(student_logits: torch.Tensor, bad: torch.Tensor) -> torch.Tensor:
    """L_unc = −mean over bad masks of Σ_j log softmax(student)_j (pushes them towards uniform).
    Zero when there is no bad mask."""
    if not bad.any():
        return student_logits.sum() * 0.0
    logp = F.log_softmax(student_logits[bad], dim=-1)
    return -logp.sum(-1).mean()


def student_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, valid: torch.Tensor,
                 labels: torch.Tensor, a: float, tau: float, lambda_mil: float = 1.0,
                 lambda_unc: float = 0.15) -> tuple[torch.Tensor, dict[str, float]]:
    """λ1·L_MIL + λ2·L_unc for the student (the teacher is frozen: pass its logits detached).

    Returns:
        (loss, {"mil": ..., "unc": ..., "bad_fraction": ...}).
    """
    l_mil = mil_loss(student_logits, valid, labels, a)
    bad = bad_masks(teacher_logits.detach(), valid, labels, tau)
    l_unc = uncertainty_loss(student_logits, bad)
    frac = float(bad.sum()) / max(1, int(valid.sum()))
    return lambda_mil * l_mil + lambda_unc * l_unc, {"mil": l_mil.item(), "unc": l_unc.item(), "bad_fraction": frac}
