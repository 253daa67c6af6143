"""FMbSeg's Stage 2: an alignment module from frozen DINOv2 patch features into CLIP's text space,
and its loss TSupCon. Pure torch, no Ray.

``AlignmentHead`` maps (B, N, D) patch features to (B, N, E) unit vectors; ``kind`` picks the
module of the paper's ablation: ``linear``, ``mlp`` or ``block`` (one transformer block —
multi-head self-attention over the image's patches + MLP — then a linear map to E; the paper's
choice). ``tsupcon`` is Eq. 1–4 of the paper (and a balanced form of it); ``label_patches`` is
the inference rule (nearest text prototype per patch).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

KINDS = ("linear", "mlp", "block")


class AlignmentHead(nn.Module):
    """DINOv2 patch features → unit vectors in CLIP's joint space.

    Args:
        in_dim (int): D, DINOv2's hidden size.
        out_dim (int): E, CLIP's projection size (the text features' width).
        kind (str): ``linear``, ``mlp`` or ``block``.
        heads (int): attention heads of the block (``in_dim`` must divide by it).
        mlp_ratio (float): hidden width of the MLP (and of the block's MLP) over ``in_dim``.

    ``args`` holds the constructor arguments (saved with the checkpoint).
    """

    def __init__(self, in_dim: int, out_dim: int, kind: str = "block", heads: int = 4, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"alignment module kind must be one of {', '.join(KINDS)}, not {kind!r}")
        self.args: dict[str, Any] = {"in_dim": in_dim, "out_dim": out_dim, "kind": kind, "heads": heads,
                                     "mlp_ratio": mlp_ratio}
        hidden = int(in_dim * mlp_ratio)
        self.kind = kind
        if kind == "block":
            self.norm1 = nn.LayerNorm(in_dim)
            self.attn = nn.MultiheadAttention(in_dim, heads, batch_first=True)
            self.norm2 = nn.LayerNorm(in_dim)
            self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, in_dim))
            self.out = nn.Linear(in_dim, out_dim)
        elif kind == "mlp":
            self.out = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))
        else:
            self.out = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, D) patch features → (B, N, E) unit vectors."""
        if self.kind == "block":
            h = self.norm1(x)
            x = x + self.attn(h, h, h, need_weights=False)[0]
            x = x + self.mlp(self.norm2(x))
        return F.normalize(self.out(x), dim=-1)


def tsupcon(z: torch.Tensor, labels: torch.Tensor, text: torch.Tensor, temperature: float = 0.1,
            balanced: bool = False) -> torch.Tensor:
    """TSupCon (FMbSeg Eq. 1–4) over the patches of a batch.

    With s(a, b) = aᵀb / τ and, for patch i, the denominator
    Dᵢ = log(Σₖ exp s(zᵢ, tₖ) + Σ_{j≠i} exp s(zᵢ, zⱼ)):

    - per text prototype k that has patches: the mean over its patches i of −s(zᵢ, tₖ) + Dᵢ;
    - per patch i with other patches of its class P(i): the mean over p ∈ P(i) of −s(zᵢ, z_p) + Dᵢ
      (SupCon over same-class patches across the batch);

    summed and divided by (M + K), M = B·N patches and K prototypes: the paper's form, where the K
    text terms weigh K / (M + K) (under 1 % for 5 images of 37² patches). ``balanced``: the mean of
    the text terms (over the prototypes that have patches) plus the sum of the patch terms over M,
    so the alignment to the text weighs as much as the clustering of the patches.

    Args:
        z (torch.Tensor): (M, E) unit patch vectors (the batch's patches, flattened).
        labels (torch.Tensor): (M,) int64 class index of each patch, in [0, K).
        text (torch.Tensor): (K, E) unit text prototypes (not trained).
        temperature (float): τ.
        balanced (bool): weigh the text terms' mean and the patch terms' mean equally.

    Returns:
        scalar loss (differentiable in ``z``).
    """
    m, k = z.shape[0], text.shape[0]
    s_zt = z @ text.T / temperature  # (M, K)
    s_zz = z @ z.T / temperature  # (M, M)
    eye = torch.eye(m, dtype=torch.bool, device=z.device)
    denom = torch.logsumexp(torch.cat([s_zt, s_zz.masked_fill(eye, float("-inf"))], dim=1), dim=1)  # (M,)
    onehot = F.one_hot(labels, k).to(z.dtype)  # (M, K)
    per_class = onehot.sum(0)  # patches of each prototype
    text_terms = onehot * (denom[:, None] - s_zt)  # (M, K), nonzero at each patch's own class
    text_each = text_terms.sum(0)[per_class > 0] / per_class[per_class > 0]  # (prototypes with patches,)
    same = (labels[:, None] == labels[None, :]) & ~eye  # (M, M) positives
    positives = same.sum(1)
    pos_mean = (s_zz * same).sum(1) / positives.clamp(min=1)
    patch_loss = ((denom - pos_mean) * (positives > 0)).sum()
    if balanced:
        return text_each.mean() + patch_loss / m
    return (text_each.sum() + patch_loss) / (m + k)


def label_patches(z: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Similarity of every patch to every prototype: (..., E) × (K, E) → (..., K) cosine (both unit);
    the argmax over K is the patch's label."""
    return z @ text.T
