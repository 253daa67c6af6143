"""The toy DINOv2: a transformers ``Dinov2Model`` of a small configuration, distilled from the toy
SAM image encoder (its patch grid is the same 16×16, so the patch features carry the objects SAM
sees), and its quality figure (a linear probe classifying 8×8 patches into background + 5 classes)."""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..data.toyscenes import CLASSES, Scene
from .common import Optimiser


def _dino_config():
    from transformers import Dinov2Config

    return Dinov2Config(hidden_size=96, num_hidden_layers=4, num_attention_heads=4, mlp_ratio=2, patch_size=8,
                        image_size=128)


def _dino_pixels(torch, images: np.ndarray):
    from ..models.registry import IMAGENET_MEAN, IMAGENET_STD

    x = torch.as_tensor(images).permute(0, 3, 1, 2).float() / 255.0
    return (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]


def dino_patch_features(model, images: np.ndarray):
    """(B, 128, 128, 3) uint8 → (B, 256, D) patch tokens (CLS dropped), no grad."""
    import torch

    with torch.inference_mode():
        return model(pixel_values=_dino_pixels(torch, images)).last_hidden_state[:, 1:]


def train_dino(pool: list[Scene], teacher_sam, steps: int, batch: int, lr: float, seed: int,
               log: Callable[[str], None] = print):
    """Distil the toy SAM image encoder's 16×16 feature map into DINOv2 patch tokens (cosine loss
    through a linear head that is dropped afterwards).

    Returns:
        (Dinov2Model, list of per-step losses).
    """
    import torch
    import torch.nn.functional as F
    from transformers import Dinov2Model

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = Dinov2Model(_dino_config()).train()
    head = torch.nn.Linear(96, int(teacher_sam.image_encoder.neck[0].out_channels))
    opt = Optimiser(list(model.parameters()) + list(head.parameters()), lr, steps, "dino", log)
    for _ in range(steps):
        idx = rng.integers(0, len(pool), batch)
        imgs = np.stack([pool[i].image for i in idx])
        with torch.no_grad():
            x = teacher_sam.preprocess(torch.as_tensor(imgs).permute(0, 3, 1, 2).float())
            target = teacher_sam.image_encoder(x).flatten(2).transpose(1, 2)  # (B, 256, C)
        pred = head(model(pixel_values=_dino_pixels(torch, imgs)).last_hidden_state[:, 1:])
        loss = 1 - F.cosine_similarity(pred, target, dim=-1).mean()
        opt.step(loss, loss.item())
    return model.eval(), opt.losses


def patch_labels(semantic: np.ndarray, patch: int = 8) -> np.ndarray:
    """(H, W) class map → (H/p · W/p,) majority class per patch."""
    h, w = semantic.shape
    blocks = semantic.reshape(h // patch, patch, w // patch, patch).transpose(0, 2, 1, 3).reshape(-1, patch * patch)
    return np.array([np.bincount(b, minlength=len(CLASSES) + 1).argmax() for b in blocks])


def dino_quality(model, train: list[Scene], test: list[Scene]) -> tuple[float, float]:
    """Linear-probe patch accuracy (background + 5 classes): least squares on one-hot targets
    fitted on ``train`` scenes' patch features, scored on ``test`` scenes' patches.

    Returns:
        (accuracy, class-balanced accuracy = mean of the 6 per-class recalls; most patches are
        background, so the balanced figure is the informative one).
    """

    def features(scenes):
        feats = [dino_patch_features(model, np.stack([s.image for s in scenes[i:i + 64]])).numpy()
                 for i in range(0, len(scenes), 64)]
        x = np.concatenate(feats).reshape(-1, feats[0].shape[-1])
        y = np.concatenate([patch_labels(s.semantic) for s in scenes])
        return np.hstack([x, np.ones((len(x), 1))]), y

    x, y = features(train)
    onehot = np.eye(len(CLASSES) + 1)[y]
    w = np.linalg.solve(x.T @ x + 1e-2 * np.eye(x.shape[1]), x.T @ onehot)
    xt, yt = features(test)
    pred = (xt @ w).argmax(1)
    recalls = [float((pred[yt == k] == k).mean()) for k in range(len(CLASSES) + 1) if (yt == k).any()]
    return float((pred == yt).mean()), float(np.mean(recalls))
