"""Mask utilities: COCO RLE (pycocotools), boxes, IoU, NMS. Pure numpy."""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils


def mask_to_rle(mask: np.ndarray) -> dict:
    """Encode one (H, W) bool mask as COCO RLE ``{"size": [H, W], "counts": bytes}``."""
    if mask.ndim != 2:
        raise ValueError(f"mask_to_rle expects (H, W), got {mask.shape}")
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))


def masks_to_rles(masks: np.ndarray) -> list[dict]:
    """Encode (N, H, W) bool masks as N COCO RLE dicts (one pycocotools call)."""
    if masks.ndim != 3:
        raise ValueError(f"masks_to_rles expects (N, H, W), got {masks.shape}")
    if masks.shape[0] == 0:
        return []
    fortran = np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8))
    return mask_utils.encode(fortran)


def rle_to_mask(rle: dict) -> np.ndarray:
    """Decode one COCO RLE dict (counts as bytes or str) to an (H, W) bool mask."""
    rle = dict(rle)
    if isinstance(rle["counts"], str):
        rle["counts"] = rle["counts"].encode("ascii")
    return mask_utils.decode(rle).astype(bool)


def _bytes_counts(rles: list[dict]) -> list[dict]:
    """RLE dicts with ``counts`` as bytes, as pycocotools takes them (JSON gives str)."""
    return [r if isinstance(r["counts"], bytes) else {**r, "counts": r["counts"].encode("ascii")} for r in rles]


def rles_to_masks(rles: list[dict], size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode N RLE dicts to (N, H, W) bool; ``size`` gives (H, W) when N is 0."""
    if not rles:
        if size is None:
            raise ValueError("rles_to_masks: no masks and no size given")
        return np.zeros((0, *size), dtype=bool)
    return mask_utils.decode(_bytes_counts(rles)).transpose(2, 0, 1).astype(bool)


def rle_areas(rles: list[dict]) -> np.ndarray:
    """(N,) int64 pixel counts of N RLE masks, in one pycocotools call (no decoding)."""
    if not rles:
        return np.zeros(0, np.int64)
    return np.asarray(mask_utils.area(_bytes_counts(rles)), np.int64).reshape(-1)


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """(N, H, W) bool → (N, 4) float32 xyxy boxes (x1, y1 inclusive; x2, y2 exclusive); empty mask → zeros."""
    n = masks.shape[0]
    boxes = np.zeros((n, 4), dtype=np.float32)
    if n == 0:
        return boxes
    rows = masks.any(axis=2)
    cols = masks.any(axis=1)
    for i in range(n):
        ys = np.flatnonzero(rows[i])
        xs = np.flatnonzero(cols[i])
        if len(ys):
            boxes[i] = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)
    return boxes


def rle_iou(a: list[dict], b: list[dict]) -> np.ndarray:
    """Pairwise mask IoU (len(a), len(b)) float64 computed on RLEs by pycocotools."""
    if not a or not b:
        return np.zeros((len(a), len(b)))
    return np.asarray(mask_utils.iou(a, b, [0] * len(b)), dtype=np.float64)


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (N, H, W) and (M, H, W) bool masks → (N, M) float64 (0 where both empty)."""
    fa = a.reshape(a.shape[0], -1).astype(np.float64)
    fb = b.reshape(b.shape[0], -1).astype(np.float64)
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


DENSE_NMS_BYTES = 1 << 28


def mask_nms(rles: list[dict], scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy mask NMS: indices kept (in descending score order).

    Each kept mask is compared with the masks still standing only (one IoU row per kept mask).
    Masks are decoded once and compared densely (exact counts by matrix products, whatever the
    masks' run count: noisy masks make RLE IoU slow) when they fit in ``DENSE_NMS_BYTES``; larger
    sets are compared on their RLEs by pycocotools.

    Args:
        rles (list[dict]): N COCO RLE masks of one size.
        scores (np.ndarray): (N,) scores.
        iou_threshold (float): a mask overlapping a kept one by more than this is dropped.
    """
    order = np.argsort(-np.asarray(scores), kind="stable")
    n = len(order)
    if n == 0:
        return order
    ordered = [rles[i] for i in order]
    h, w = (int(v) for v in ordered[0]["size"])
    if n * h * w <= DENSE_NMS_BYTES:
        dense = rles_to_masks(ordered).reshape(n, h * w).astype(np.float32)
        areas = dense.sum(1)

        def ious(pos: int, rest: np.ndarray) -> np.ndarray:
            inter = dense[rest] @ dense[pos]
            union = areas[rest] + areas[pos] - inter
            return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    else:
        def ious(pos: int, rest: np.ndarray) -> np.ndarray:
            return rle_iou([ordered[pos]], [ordered[i] for i in rest])[0]

    keep: list[int] = []
    alive = np.ones(n, dtype=bool)
    for pos in range(n):
        if not alive[pos]:
            continue
        keep.append(int(order[pos]))
        rest = np.flatnonzero(alive[pos + 1:]) + pos + 1
        if len(rest):
            alive[rest[ious(pos, rest) > iou_threshold]] = False
    return np.asarray(keep, dtype=np.int64)


def class_colours(n: int) -> np.ndarray:
    """(n, 3) uint8 bright, well-separated colours for class ids 0…n-1 (0, background, black):
    hues spaced by the golden angle, alternating brightness. Label PNGs and overlays share them."""
    import colorsys

    out = np.zeros((max(n, 1), 3), np.uint8)
    for i in range(1, n):
        r, g, b = colorsys.hsv_to_rgb(((i - 1) * 0.618033988749895) % 1.0, 0.85, 1.0 if i % 2 else 0.8)
        out[i] = (int(r * 255), int(g * 255), int(b * 255))
    return out


def palette() -> list[int]:
    """A 256-entry PIL palette for label maps: 0 black, 255 (ignore) white, ids 1…254 in
    ``class_colours`` (768 ints, for ``Image.putpalette``)."""
    colours = class_colours(255)
    return [int(v) for v in colours.reshape(-1)] + [255, 255, 255]
