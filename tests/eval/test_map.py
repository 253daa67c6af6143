"""mAP50 through COCOeval on constructed predictions with known answers."""

import math

import numpy as np
import pytest

from usam_ray.eval.metrics import instance_scores
from usam_ray.masks import mask_to_rle


def _rle(mask):
    r = mask_to_rle(mask)
    return {"size": r["size"], "counts": r["counts"].decode()}


def _box(h, w, y0, x0, y1, x1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


A = _box(40, 40, 2, 2, 12, 12)      # class 1
B = _box(40, 40, 20, 20, 36, 36)    # class 2
GT = {
    "images": [{"id": 1, "height": 40, "width": 40, "file_name": "x"}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "segmentation": _rle(A), "area": int(A.sum()), "iscrowd": 0,
         "bbox": [2, 2, 10, 10]},
        {"id": 2, "image_id": 1, "category_id": 1, "segmentation": _rle(B), "area": int(B.sum()), "iscrowd": 0,
         "bbox": [20, 20, 16, 16]},
    ],
    "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
}


def _det(mask, cat=1, score=0.9):
    return {"image_id": 1, "category_id": cat, "score": score, "segmentation": _rle(mask)}


def test_perfect_predictions():
    s = instance_scores(GT, [_det(A), _det(B, score=0.8)])
    assert s.map50 == pytest.approx(1.0) and s.map == pytest.approx(1.0)


def test_shifted_masks_pass_at_05_but_not_at_high_iou():
    a_shift = _box(40, 40, 3, 3, 13, 13)  # IoU 81/119 = 0.68
    s = instance_scores(GT, [_det(a_shift), _det(B, score=0.8)])
    assert s.map50 == pytest.approx(1.0)
    assert s.map < 0.9
    far = _box(40, 40, 7, 7, 17, 17)  # IoU 25/175 < 0.5
    s = instance_scores(GT, [_det(far), _det(B, score=0.8)])
    # one of two found at rank 2 after a false positive: precision 1/2 at recall 1/2
    assert s.map50 == pytest.approx(51 * 0.5 / 101, abs=1e-6)


def test_duplicate_ranked_above_a_true_detection():
    # A (TP), A again (FP), B (TP): interpolated precision 1 up to recall .5, then 2/3
    s = instance_scores(GT, [_det(A, score=0.9), _det(A, score=0.85), _det(B, score=0.8)])
    assert s.map50 == pytest.approx((51 * 1.0 + 50 * (2 / 3)) / 101, abs=1e-6)


def test_wrong_class_scores_zero():
    s = instance_scores(GT, [_det(A, cat=2), _det(B, cat=2)])
    assert s.map50 == pytest.approx(0.0)
    assert s.ap50_per_class[1] == pytest.approx(0.0)
    assert math.isnan(s.ap50_per_class[2])  # no ground truth of class 2: left out of the mean


def test_no_predictions():
    s = instance_scores(GT, [])
    assert s.map50 == 0.0 and s.num_gt == 2
