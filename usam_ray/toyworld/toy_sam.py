"""The toy SAM: a segment_anything ``Sam`` of a small architecture, trained from scratch on point
prompt → instance mask pairs of toy scenes, and its quality figure (mean IoU of the best-by-
predicted-IoU multimask output for one interior point per instance)."""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..data.toyscenes import Scene
from .common import Optimiser, interior_point

TOY_SAM_ARCH = {
    "img_size": 128, "patch_size": 8, "embed_dim": 96, "depth": 4, "num_heads": 4, "window_size": 8,
    "global_attn_indexes": [1, 3], "prompt_embed_dim": 64, "decoder_depth": 2, "decoder_mlp_dim": 256,
    "decoder_heads": 4, "iou_head_hidden_dim": 64,
}


def _sam_losses(torch, logits, target, iou_pred):
    """SAM's recipe: focal (×20) + dice per output, min over the multimask outputs, plus token 0;
    IoU head regressed onto each output's actual IoU.

    Args:
        logits: (N, 4, h, w) mask logits (token 0 = single output, 1..3 = multimask).
        target: (N, h, w) float {0, 1}.
        iou_pred: (N, 4).
    """
    import torch.nn.functional as F

    t = target[:, None].expand_as(logits)
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
    pt = p * t + (1 - p) * (1 - t)
    focal = (0.25 * t + 0.75 * (1 - t)) * (1 - pt) ** 2 * ce
    focal = focal.flatten(2).mean(-1)
    inter = (p * t).flatten(2).sum(-1)
    dice = 1 - (2 * inter + 1) / (p.flatten(2).sum(-1) + t.flatten(2).sum(-1) + 1)
    per = 20 * focal + dice  # (N, 4)
    mask_loss = per[:, 1:].min(dim=1).values + per[:, 0]
    with torch.no_grad():
        b = logits > 0
        tb = t > 0.5
        actual = (b & tb).flatten(2).sum(-1) / ((b | tb).flatten(2).sum(-1)).clamp(min=1)
    iou_loss = F.mse_loss(iou_pred, actual.float(), reduction="none").mean(-1)
    return (mask_loss + iou_loss).mean(), mask_loss.mean().item()


def _sam_batch(rng: np.random.Generator, pool: list[Scene], batch: int, prompts: int):
    """Images (B, 128, 128, 3), prompt points (B, K, 2) and target masks (B, K, 128, 128)."""
    imgs, pts, tgts = [], [], []
    while len(imgs) < batch:
        sc = pool[int(rng.integers(0, len(pool)))]
        if len(sc.instances) == 0:
            continue
        img, inst = sc.image, sc.instances
        if rng.random() < 0.5:  # flips as augmentation
            img, inst = img[:, ::-1], inst[:, :, ::-1]
        p, t = [], []
        for _ in range(prompts):
            k = int(rng.integers(0, len(inst)))
            ys, xs = np.nonzero(inst[k])
            j = int(rng.integers(0, len(ys)))
            p.append((xs[j], ys[j]))
            t.append(inst[k])
        imgs.append(np.ascontiguousarray(img))
        pts.append(p)
        tgts.append(np.stack(t))
    return np.stack(imgs), np.asarray(pts, np.float32), np.stack(tgts)


def train_sam(pool: list[Scene], steps: int, batch: int, prompts: int, lr: float, seed: int,
              log: Callable[[str], None] = print):
    """Train a toy SAM from scratch on point prompt → instance mask pairs.

    Returns:
        (sam in eval mode, list of per-step mask losses).
    """
    import torch
    import torch.nn.functional as F

    from ..models.sam import build_sam

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    sam = build_sam(TOY_SAM_ARCH).train()
    opt = Optimiser(sam.parameters(), lr, steps, "sam", log, clip_norm=1.0)
    for _ in range(steps):
        imgs, pts, tgts = _sam_batch(rng, pool, batch, prompts)
        x = sam.preprocess(torch.as_tensor(imgs).permute(0, 3, 1, 2).float())
        feats = sam.image_encoder(x)
        pe = sam.prompt_encoder.get_dense_pe()
        coords = torch.as_tensor(pts).reshape(-1, 1, 2)
        labels = torch.ones(coords.shape[0], 1, dtype=torch.int)
        sparse, dense = sam.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        sparse = sparse.reshape(batch, prompts, *sparse.shape[1:])
        dense = dense.reshape(batch, prompts, *dense.shape[1:])
        logits, ious = [], []
        for b in range(batch):
            lo, io = sam.mask_decoder.predict_masks(feats[b:b + 1], pe, sparse[b], dense[b])
            logits.append(lo)
            ious.append(io)
        logits = torch.cat(logits)  # (B*K, 4, 64, 64)
        target = torch.as_tensor(tgts).reshape(-1, 1, 128, 128).float()
        target = F.interpolate(target, size=logits.shape[-2:], mode="area")[:, 0]
        target = (target > 0.5).float()
        loss, mask_loss = _sam_losses(torch, logits, target, torch.cat(ious))
        opt.step(loss, mask_loss)
    return sam.eval(), opt.losses


def sam_quality(sam, scenes: list[Scene]) -> float:
    """Mean IoU of SAM's best multimask output (by predicted IoU) for one interior point per instance."""
    import torch

    from ..methods.sam_embed import SamMaskEmbedder, prepare_image

    embedder = SamMaskEmbedder(sam)
    ious = []
    with torch.inference_mode():
        for sc in scenes:
            if len(sc.instances) == 0:
                continue
            padded, size = prepare_image(sc.image, embedder.image_size)
            x = torch.as_tensor(padded[None]).permute(0, 3, 1, 2).float()
            feats = sam.image_encoder(sam.preprocess(x[..., : size[0], : size[1]]))
            scale = np.array([size[1] / sc.image.shape[1], size[0] / sc.image.shape[0]])
            pts = np.array([interior_point(m) for m in sc.instances]) * scale
            low, iou, _ = embedder.decode_points(feats, torch.as_tensor(pts, dtype=torch.float32))
            best = iou.argmax(1)
            masks = sam.postprocess_masks(low[torch.arange(len(best)), best][:, None], size, sc.image.shape[:2])[:, 0] > 0
            m = masks.numpy()
            inter = (m & sc.instances).sum((1, 2))
            union = (m | sc.instances).sum((1, 2))
            ious.extend((inter / np.maximum(union, 1)).tolist())
    return float(np.mean(ious))
