"""The toy DINOv2: a transformers ``Dinov2Model`` of a small configuration, distilled without class
labels from the other two toy models, and its quality figure (a linear probe classifying 8×8
patches into background + 5 classes).

Two targets per patch, each through its own linear head (both heads are dropped afterwards):

- the toy SAM image encoder's feature at that patch (its grid is the same 16×16): where objects
  and their edges are;
- for a patch mostly covered by one object, the toy CLIP's image embedding of that object's
  cut-out (the crop the CLIP was trained on): what the object looks like to CLIP.

The cut-outs come from the scenes' instance masks (the toy SAM reproduces them at ~0.75 IoU from
one point); no class label or caption is read. SAM-only distillation (the first toy DINOv2) left a
balanced probe at 0.31: SAM's features say *where* an object is, not *what* it is, and the real
DINOv2's self-supervised features carry both.
"""

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


def patch_instances(sc: Scene, patch: int = 8, cover: float = 0.5) -> np.ndarray:
    """(H/p · W/p,) index of the instance covering at least ``cover`` of each patch, −1 where none."""
    h, w = sc.semantic.shape
    ids = np.full((h, w), -1, np.int64)
    for k, m in enumerate(sc.instances):
        ids[m] = k
    blocks = ids.reshape(h // patch, patch, w // patch, patch).transpose(0, 2, 1, 3).reshape(-1, patch * patch)
    out = np.full(len(blocks), -1, np.int64)
    for k in range(len(sc.instances)):
        out[(blocks == k).mean(1) >= cover] = k
    return out


def _cutout_embeddings(torch, clip, scenes: list[Scene]):
    """Unit CLIP image embeddings of every instance cut-out of ``scenes``, concatenated in order."""
    from ..models.clip import projected
    from .toy_clip import _clip_pixels, crop

    crops = [crop(None, sc.image, m) for sc in scenes for m in sc.instances]
    if not crops:
        return torch.zeros(0, clip.config.projection_dim)
    v = projected(clip.get_image_features(pixel_values=_clip_pixels(torch, np.stack(crops))))
    return v / v.norm(dim=-1, keepdim=True)


def train_dino(pool: list[Scene], teacher_sam, teacher_clip, steps: int, batch: int, lr: float, seed: int,
               log: Callable[[str], None] = print, clip_weight: float = 3.0):
    """Distil the toy SAM's 16×16 feature map (every patch) and the toy CLIP's object cut-out
    embeddings (patches an object covers) into DINOv2 patch tokens: cosine losses through two
    linear heads that are dropped afterwards; the CLIP term weighs ``clip_weight``. See the module docstring.

    Returns:
        (Dinov2Model, list of per-step losses).
    """
    import torch
    import torch.nn.functional as F
    from transformers import Dinov2Model

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = Dinov2Model(_dino_config()).train()
    sam_head = torch.nn.Linear(96, int(teacher_sam.image_encoder.neck[0].out_channels))
    clip_head = torch.nn.Linear(96, int(teacher_clip.config.projection_dim))
    opt = Optimiser(list(model.parameters()) + list(sam_head.parameters()) + list(clip_head.parameters()), lr,
                    steps, "dino", log)
    for _ in range(steps):
        scenes = [pool[i] for i in rng.integers(0, len(pool), batch)]
        imgs = np.stack([sc.image for sc in scenes])
        with torch.no_grad():
            x = teacher_sam.preprocess(torch.as_tensor(imgs).permute(0, 3, 1, 2).float())
            sam_target = teacher_sam.image_encoder(x).flatten(2).transpose(1, 2)  # (B, 256, C)
            cutouts = _cutout_embeddings(torch, teacher_clip, scenes)  # (instances in batch, E)
        offsets = np.cumsum([0] + [len(sc.instances) for sc in scenes])
        owner = np.concatenate([np.where(pi >= 0, pi + offsets[b], -1)
                                for b, pi in enumerate(patch_instances(sc) for sc in scenes)])
        tokens = model(pixel_values=_dino_pixels(torch, imgs)).last_hidden_state[:, 1:].reshape(-1, 96)
        loss = 1 - F.cosine_similarity(sam_head(tokens), sam_target.reshape(len(tokens), -1), dim=-1).mean()
        covered = torch.as_tensor(owner >= 0)
        if covered.any():
            target = cutouts[torch.as_tensor(owner[owner >= 0])]
            loss = loss + clip_weight * (1 - F.cosine_similarity(clip_head(tokens[covered]), target, dim=-1).mean())
        opt.step(loss, loss.item())
    return model.eval(), opt.losses


def patch_labels(semantic: np.ndarray, patch: int = 8) -> np.ndarray:
    """(H, W) class map → (H/p · W/p,) majority class per patch."""
    h, w = semantic.shape
    blocks = semantic.reshape(h // patch, patch, w // patch, patch).transpose(0, 2, 1, 3).reshape(-1, patch * patch)
    return np.array([np.bincount(b, minlength=len(CLASSES) + 1).argmax() for b in blocks])


def dino_quality(model, train: list[Scene], test: list[Scene]) -> tuple[float, float]:
    """Class-balanced linear-probe patch accuracy (background + 5 classes; ``balanced_probe``),
    fitted on ``train`` scenes' patch features, scored on ``test`` scenes' patches.

    Returns:
        (accuracy, balanced accuracy = mean of the 6 per-class recalls; the informative figure).
    """

    def features(scenes):
        feats = [dino_patch_features(model, np.stack([s.image for s in scenes[i:i + 64]])).numpy()
                 for i in range(0, len(scenes), 64)]
        return np.concatenate(feats).reshape(-1, feats[0].shape[-1]), np.concatenate([patch_labels(s.semantic) for s in scenes])

    accuracy, recalls = balanced_probe(*features(train), *features(test))
    return accuracy, float(np.mean(recalls))


def balanced_probe(x: np.ndarray, y: np.ndarray, xt: np.ndarray, yt: np.ndarray) -> tuple[float, list[float]]:
    """A class-balanced linear probe: least squares (+ bias, small ridge) on one-hot targets, each
    patch weighted by 1 / its class's count (so background, ~88 % of the patches, does not drown
    the classes), fitted on (x (P, D), y (P,)), scored on (xt, yt).

    Returns:
        (accuracy, the recall of each class present in ``yt``, background first).
    """
    k = len(CLASSES) + 1
    x, xt = np.hstack([x, np.ones((len(x), 1))]), np.hstack([xt, np.ones((len(xt), 1))])
    onehot = np.eye(k)[y]
    weights = 1.0 / np.bincount(y, minlength=k)[y]  # (patches,)
    xw = x * weights[:, None]
    w = np.linalg.solve(x.T @ xw + 1e-2 * np.eye(x.shape[1]) * weights.mean(), xw.T @ onehot)
    pred = (xt @ w).argmax(1)
    return float((pred == yt).mean()), [float((pred[yt == c] == c).mean()) for c in range(k) if (yt == c).any()]
