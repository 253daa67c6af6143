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


# the prompt-encoder parts a point-only prompt never uses: the negative-point embedding, the two
# box-corner embeddings and the dense mask-prompt path. Training only these teaches boxes, negative
# points and mask prompts while a single positive point gives bit-identical outputs.
PROMPT_ONLY_PARAMETERS = ("prompt_encoder.point_embeddings.0.", "prompt_encoder.point_embeddings.2.",
                          "prompt_encoder.point_embeddings.3.", "prompt_encoder.mask_downscaling.")


def _prompt_batch(rng: np.random.Generator, pool: list[Scene], feats, batch: int, prompts: int):
    """Scene indices (B,), points (B·K, 2, 2) (positive, negative), boxes (B·K, 4) and targets (B·K, H, W)
    for box + point prompts as coarse masks give them: jittered boxes, a positive point inside the
    instance, a negative one outside it (on another object half the time)."""
    idx, pts, boxes, tgts = [], [], [], []
    while len(idx) < batch:
        i = int(rng.integers(0, len(pool)))
        sc = pool[i]
        if len(sc.instances) == 0:
            continue
        idx.append(i)
        size = sc.image.shape[0]
        for _ in range(prompts):
            k = int(rng.integers(0, len(sc.instances)))
            m = sc.instances[k]
            ys, xs = np.nonzero(m)
            j = int(rng.integers(0, len(ys)))
            others = sc.instances.any(0) & ~m
            pool_neg = others if (others.any() and rng.random() < 0.5) else ~m
            ny, nx = np.nonzero(pool_neg)
            n = int(rng.integers(0, len(ny)))
            pts.append([(xs[j], ys[j]), (nx[n], ny[n])])
            x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
            w, h = x1 - x0, y1 - y0
            jitter = rng.uniform(-0.15, 0.15, 4) * np.array([w, h, w, h]) + rng.uniform(-2, 2, 4)
            boxes.append(np.clip(np.array([x0, y0, x1, y1], np.float32) + jitter, 0, size))
            tgts.append(m)
    return np.asarray(idx), np.asarray(pts, np.float32), np.asarray(boxes, np.float32), np.stack(tgts)


def finetune_sam_prompts(sam, pool: list[Scene], steps: int, batch: int, prompts: int, lr: float, seed: int,
                         log: Callable[[str], None] = print):
    """Teach a point-trained toy SAM boxes, negative points and mask prompts (SAM's interactive
    recipe: a box + points pass, then a second pass with the first's logits as the mask prompt),
    training only ``PROMPT_ONLY_PARAMETERS`` so that single-point outputs do not change.

    Returns:
        (sam in eval mode, list of per-step mask losses).
    """
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    trainable = [p for n, p in sam.named_parameters() if n.startswith(PROMPT_ONLY_PARAMETERS)]
    for n, p in sam.named_parameters():
        p.requires_grad_(n.startswith(PROMPT_ONLY_PARAMETERS))
    sam.eval()  # the frozen parts stay in inference mode
    with torch.no_grad():
        images = torch.as_tensor(np.stack([sc.image for sc in pool])).permute(0, 3, 1, 2).float()
        feats = torch.cat([sam.image_encoder(sam.preprocess(images[k:k + 32])) for k in range(0, len(pool), 32)])
        pe = sam.prompt_encoder.get_dense_pe()
    opt = Optimiser(trainable, lr, steps, "sam prompts", log, clip_norm=1.0)
    for _ in range(steps):
        idx, pts, boxes, tgts = _prompt_batch(rng, pool, feats, batch, prompts)
        coords = torch.as_tensor(pts)
        labels = torch.tensor([[1, 0]] * len(pts), dtype=torch.int)
        box_t = torch.as_tensor(boxes)
        target = torch.as_tensor(tgts)[:, None].float()
        target = (F.interpolate(target, size=(4 * feats.shape[-2], 4 * feats.shape[-1]), mode="area")[:, 0] > 0.5).float()
        image_feats = feats[torch.as_tensor(idx)].repeat_interleave(prompts, dim=0)
        sparse, dense = sam.prompt_encoder(points=(coords, labels), boxes=box_t, masks=None)
        lo1, io1 = _decode_each(sam, image_feats, pe, sparse, dense)
        loss1, m1 = _sam_losses(torch, lo1, target, io1)
        best = io1[:, 1:].argmax(1) + 1
        prev = lo1[torch.arange(len(best)), best][:, None].detach()
        sparse2, dense2 = sam.prompt_encoder(points=(coords, labels), boxes=box_t, masks=prev)
        lo2, io2 = _decode_each(sam, image_feats, pe, sparse2, dense2)
        loss2, m2 = _sam_losses(torch, lo2, target, io2)
        opt.step(loss1 + loss2, (m1 + m2) / 2)
    for p in sam.parameters():
        p.requires_grad_(True)
    return sam.eval(), opt.losses


def _decode_each(sam, feats, pe, sparse, dense):
    """The mask decoder on N (image, prompt) pairs: (N, 4, h, w) logits and (N, 4) IoUs."""
    import torch

    outs = [sam.mask_decoder.predict_masks(feats[n:n + 1], pe, sparse[n:n + 1], dense[n:n + 1]) for n in range(len(feats))]
    return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])


def sam_prompt_quality(sam, scenes: list[Scene], seed: int = 0) -> dict[str, float]:
    """Mean IoU per instance of the box + points prompt (UO-SAM's step 1: a box jittered as in
    training, an interior positive and an outside negative point; best by predicted IoU) and of the
    second pass with step 1's logits as the mask prompt (single output)."""
    import torch

    from ..methods.sam_embed import SamMaskEmbedder, prepare_image

    rng = np.random.default_rng(seed)
    embedder = SamMaskEmbedder(sam)
    first, second = [], []
    with torch.inference_mode():
        for sc in scenes:
            if len(sc.instances) == 0:
                continue
            padded, size = prepare_image(sc.image, embedder.image_size)
            feats = embedder.encode(padded[None], [size])
            _, pts, boxes, tgts = _prompt_batch(rng, [sc], None, 1, len(sc.instances))
            scale = np.array([size[1] / sc.image.shape[1], size[0] / sc.image.shape[0]], np.float32)
            coords = torch.as_tensor(pts * scale)
            labels = torch.tensor([[1, 0]] * len(pts), dtype=torch.int)
            box_t = torch.as_tensor(boxes * np.tile(scale, 2))
            low, iou, _ = embedder.decode_prompts(feats, coords, labels, boxes=box_t)
            best = low[torch.arange(len(low)), iou.argmax(1)][:, None]
            low2, _, _ = embedder.decode_prompts(feats, coords, labels, boxes=box_t, mask_inputs=best, multimask=False)
            for out, store in ((best, first), (low2, second)):
                m = embedder.full_size_masks(out, size, sc.image.shape[:2]).numpy()
                store.extend(((m & tgts).sum((1, 2)) / np.maximum((m | tgts).sum((1, 2)), 1)).tolist())
    return {"box_points": float(np.mean(first)), "mask_prompt": float(np.mean(second))}
