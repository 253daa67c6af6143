"""The SAM + CLIP baseline of the U-SAM paper: each SAM mask cut out of the image and classified
by CLIP against "a photo of a {c}"; the probabilities then go through the same threshold (0.70 in
the paper) and mask NMS as U-SAM's. Pure torch/numpy, no Ray."""

from __future__ import annotations

import numpy as np

from ..masks import rles_to_masks
from ..types import MaskSet


def cutouts(image: np.ndarray, masks: np.ndarray, size: int) -> np.ndarray:
    """Each mask's pixels (others black) cropped to its box, padded square, resized.

    Args:
        image (np.ndarray): (H, W, 3) uint8.
        masks (np.ndarray): (N, H, W) bool.
        size (int): output side.

    Returns:
        (N, size, size, 3) uint8 (all black for empty masks).
    """
    from PIL import Image

    out = np.zeros((len(masks), size, size, 3), np.uint8)
    for i, m in enumerate(masks):
        ys, xs = np.nonzero(m)
        if not len(ys):
            continue
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        crop = np.where(m[y0:y1, x0:x1, None], image[y0:y1, x0:x1], 0).astype(np.uint8)
        side = max(crop.shape[:2])
        square = np.zeros((side, side, 3), np.uint8)
        oy, ox = (side - crop.shape[0]) // 2, (side - crop.shape[1]) // 2
        square[oy:oy + crop.shape[0], ox:ox + crop.shape[1]] = crop
        out[i] = np.asarray(Image.fromarray(square).resize((size, size), Image.BILINEAR))
    return out


def clip_mask_probs(clip, image: np.ndarray, masks: MaskSet, classes: list[str],
                    template: str = "a photo of a {c}", batch: int = 128) -> np.ndarray:
    """(P, C) softmax over the class prompts of CLIP's (scaled) similarity for each mask cut-out.

    Args:
        clip (ClipBundle): model, tokenizer, processor, image_size.
    """
    import torch

    from ..models.clip import projected

    binary = rles_to_masks(masks.masks, image.shape[:2])
    crops = cutouts(image, binary, clip.image_size)
    with torch.inference_mode():
        text = clip.tokenizer([template.format(c=c) for c in classes], padding=True, return_tensors="pt")
        t = projected(clip.model.get_text_features(**text))
        t = t / t.norm(dim=-1, keepdim=True)
        scale = clip.model.logit_scale.exp()
        probs = []
        for s in range(0, len(crops), batch):
            pixels = clip.processor(images=list(crops[s:s + batch]), return_tensors="pt")["pixel_values"]
            v = projected(clip.model.get_image_features(pixel_values=pixels))
            v = v / v.norm(dim=-1, keepdim=True)
            probs.append((scale * v @ t.T).softmax(-1).numpy())
    return np.concatenate(probs) if probs else np.zeros((0, len(classes)), np.float32)
