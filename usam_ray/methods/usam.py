"""U-SAM labelling of one image: per-mask class probabilities → threshold → mask NMS →
instances and a semantic map. Pure numpy/torch, no Ray."""

from __future__ import annotations

import numpy as np

from ..config import LabelSettings
from ..masks import mask_nms, rle_areas, rles_to_masks
from ..types import MaskSet


def select_instances(masks: MaskSet, probs: np.ndarray, settings: LabelSettings) -> MaskSet:
    """Keep confident masks and suppress overlaps.

    Args:
        masks (MaskSet): P candidate masks as RLE with ``data["iou_pred"]`` (P,).
        probs (np.ndarray): (P, C) class probabilities of each mask.
        settings (LabelSettings): thresholds.

    Returns:
        MaskSet of the kept instances (RLE masks), ``class_ids`` 0-based into the classes,
        ``scores`` = top class probability, in descending score order; ``data["source_index"]``
        gives each instance's index among the P candidates.
    """
    probs = np.asarray(probs, dtype=np.float32)
    scores = probs.max(1) if len(probs) else np.zeros(0, np.float32)
    classes = probs.argmax(1) if len(probs) else np.zeros(0, np.int64)
    iou_pred = np.asarray(masks.data.get("iou_pred", np.ones(len(masks))), np.float32)
    areas = rle_areas(masks.masks)
    candidate = np.flatnonzero((scores >= settings.score_threshold) & (iou_pred >= settings.min_iou_pred)
                               & (areas >= settings.min_area))
    keep = candidate[mask_nms([masks.masks[i] for i in candidate], scores[candidate], settings.nms_iou)] \
        if len(candidate) else candidate
    return MaskSet(
        masks=[masks.masks[i] for i in keep],
        boxes=masks.boxes[keep] if len(keep) else np.zeros((0, 4), np.float32),
        scores=scores[keep],
        class_ids=classes[keep],
        data={"source_index": keep.astype(np.int64)},
    )


def semantic_map(instances: MaskSet, height: int, width: int) -> np.ndarray:
    """(H, W) uint8 map: class id + 1 of the highest-scored instance covering each pixel, 0 elsewhere."""
    out = np.zeros((height, width), np.uint8)
    if len(instances) == 0:
        return out
    masks = rles_to_masks(instances.masks)
    for i in np.argsort(instances.scores, kind="stable"):  # lowest first: higher scores paint over
        out[masks[i]] = int(instances.class_ids[i]) + 1
    return out
