"""Segmentation metrics, pure numpy (+ pycocotools for mAP).

Semantic metrics come from a confusion matrix ``cm`` (C, C) int64, rows = ground truth,
columns = prediction, summed over images (integer sums, so any split into shards gives exactly
the same result). Conventions:

- ground-truth pixels equal to ``ignore_index`` (255) are left out entirely;
- predicted pixels outside ``[0, C)`` (e.g. a predicted 255, "unsure") count as background (0);
- IoU_c = TP / (TP + FP + FN); a class with no ground-truth and no predicted pixel has no IoU
  (NaN) and is left out of the means; a ground-truth class never predicted has IoU 0;
- ``miou`` averages every class with an IoU (background included: PASCAL's PV-21 / COCO's
  "with background"); ``miou_no_bg`` leaves class 0 out of the mean (PV-20), not out of the matrix;
- pixel accuracy = trace / total.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

IGNORE = 255


def confusion_matrix(gt: np.ndarray, pred: np.ndarray, num_classes: int, ignore_index: int = IGNORE) -> np.ndarray:
    """Confusion matrix of one image.

    Args:
        gt (np.ndarray): (H, W) integer class ids; ``ignore_index`` pixels are skipped.
        pred (np.ndarray): (H, W) integer class ids; values outside [0, C) count as 0.
        num_classes (int): C.

    Returns:
        (C, C) int64, rows = ground truth, columns = prediction.

    Raises:
        ValueError: shapes differ, or ground truth holds ids ≥ C other than ``ignore_index``.
    """
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth is {gt.shape} but prediction is {pred.shape}")
    g = gt.reshape(-1).astype(np.int64)
    p = pred.reshape(-1).astype(np.int64)
    valid = g != ignore_index
    g, p = g[valid], p[valid]
    if g.size and (g.min() < 0 or g.max() >= num_classes):
        bad = sorted(set(np.unique(g[(g < 0) | (g >= num_classes)]).tolist()))
        raise ValueError(f"ground truth holds class ids {bad} outside [0, {num_classes})")
    p = np.where((p < 0) | (p >= num_classes), 0, p)
    return np.bincount(num_classes * g + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


@dataclass
class SemanticScores:
    """Scores from a confusion matrix.

    Attributes:
        iou (np.ndarray): (C,) float64 per-class IoU, NaN where the class is absent from both.
        acc (np.ndarray): (C,) per-class recall TP / (TP + FN), NaN where absent from ground truth.
        miou (float): mean of the non-NaN IoUs (background included).
        miou_no_bg (float): mean of the non-NaN IoUs of classes 1..C-1.
        pixel_acc (float): correctly labelled pixels / all evaluated pixels.
        mean_acc (float): mean of the non-NaN per-class accuracies.
        pixels (int): evaluated pixels.
    """

    iou: np.ndarray
    acc: np.ndarray
    miou: float
    miou_no_bg: float
    pixel_acc: float
    mean_acc: float
    pixels: int


def _nanmean(x: np.ndarray) -> float:
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else float("nan")


def scores_from_confusion(cm: np.ndarray) -> SemanticScores:
    """Per-class IoU/accuracy, mIoU (with and without class 0), pixel accuracy from a (C, C) matrix."""
    cm = np.asarray(cm, dtype=np.int64)
    tp = np.diag(cm).astype(np.float64)
    gt_pixels = cm.sum(axis=1).astype(np.float64)
    pred_pixels = cm.sum(axis=0).astype(np.float64)
    union = gt_pixels + pred_pixels - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        acc = np.where(gt_pixels > 0, tp / gt_pixels, np.nan)
    total = int(cm.sum())
    return SemanticScores(
        iou=iou, acc=acc, miou=_nanmean(iou), miou_no_bg=_nanmean(iou[1:]),
        pixel_acc=float(tp.sum() / total) if total else float("nan"), mean_acc=_nanmean(acc), pixels=total,
    )


@dataclass
class InstanceScores:
    """COCO-style instance segmentation scores (pycocotools, iouType="segm").

    Attributes:
        map50 (float): AP at mask IoU 0.5, over all categories with ground truth (−1 → NaN).
        map (float): AP averaged over IoU 0.50:0.05:0.95.
        ap50_per_class (dict[int, float]): category id → AP50 (NaN where no ground truth).
        num_predictions (int), num_gt (int): instance counts evaluated.
    """

    map50: float
    map: float
    ap50_per_class: dict[int, float] = field(default_factory=dict)
    num_predictions: int = 0
    num_gt: int = 0


def instance_scores(gt_coco: dict, results: Sequence[dict], max_dets: int = 100) -> InstanceScores:
    """mAP50 and mAP@[.5:.95] of instance masks with pycocotools' COCOeval (segm).

    Args:
        gt_coco (dict): COCO instances dict (images, annotations with RLE or polygon segmentation,
            categories); annotations with ``iscrowd`` 1 are matched as crowd regions (COCO rules).
        results (list[dict]): ``image_id``, ``category_id``, ``score``, ``segmentation`` (RLE with
            ``counts`` str or bytes).
        max_dets (int): detections per image kept (COCO: 100).
    """
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    num_gt = sum(1 for a in gt_coco.get("annotations", []) if not a.get("iscrowd", 0))
    if not results or num_gt == 0:
        nan = float("nan") if num_gt == 0 else 0.0
        per = {c["id"]: nan for c in gt_coco.get("categories", [])}
        return InstanceScores(nan, nan, per, len(results), num_gt)
    fixed = []
    for r in results:
        seg = dict(r["segmentation"])
        if isinstance(seg.get("counts"), bytes):
            seg["counts"] = seg["counts"].decode("ascii")
        fixed.append({**r, "segmentation": seg})
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {k: v for k, v in gt_coco.items()}
        coco_gt.dataset.setdefault("info", {})
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(fixed)
        ev = COCOeval(coco_gt, coco_dt, iouType="segm")
        ev.params.maxDets = [1, 10, max_dets]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval["precision"]  # (T, R, K, A, M)
    per_class: dict[int, float] = {}
    for k, cat_id in enumerate(ev.params.catIds):
        p = precision[0, :, k, 0, -1]
        p = p[p > -1]
        per_class[int(cat_id)] = float(p.mean()) if p.size else float("nan")

    def clean(v: float) -> float:
        return float("nan") if v < 0 else float(v)

    return InstanceScores(clean(ev.stats[1]), clean(ev.stats[0]), per_class, len(results), num_gt)


def remap_prediction(pred: np.ndarray, lut: Optional[np.ndarray]) -> np.ndarray:
    """Map prediction ids through a lookup table (labels' class ids → ground truth's); 255 stays 255."""
    if lut is None:
        return pred
    full = np.zeros(256, dtype=np.int64)
    full[: len(lut)] = lut
    full[255] = IGNORE
    return full[pred.astype(np.int64)]
