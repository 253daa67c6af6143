"""Semantic scores from confusion matrices, and mAP50 through COCOeval on constructed predictions
with known answers."""

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from usam_ray.eval.metrics import confusion_matrix, instance_scores, remap_prediction, scores_from_confusion
from usam_ray.masks import mask_to_rle


def test_hand_worked_case_with_ignore():
    gt = np.array([[0, 0, 1, 1],
                   [0, 255, 1, 2]])
    pred = np.array([[0, 1, 1, 1],
                     [0, 2, 2, 2]])
    cm = confusion_matrix(gt, pred, 3)
    # ignore pixel (gt 255, pred 2) is dropped: 7 pixels
    assert cm.sum() == 7
    np.testing.assert_array_equal(cm, [[2, 1, 0], [0, 2, 1], [0, 0, 1]])
    s = scores_from_confusion(cm)
    # class 0: tp 2, fp 0, fn 1 -> 2/3 ; class 1: tp 2, fp 1, fn 1 -> 2/4 ; class 2: tp 1, fp 1, fn 0 -> 1/2
    np.testing.assert_allclose(s.iou, [2 / 3, 0.5, 0.5])
    assert s.miou == pytest.approx((2 / 3 + 0.5 + 0.5) / 3)
    assert s.miou_no_bg == pytest.approx(0.5)
    assert s.pixel_acc == pytest.approx(5 / 7)


def test_absent_class_is_nan_and_left_out_but_unpredicted_gt_class_is_zero():
    gt = np.array([[0, 1, 1]])
    pred = np.array([[0, 0, 0]])
    s = scores_from_confusion(confusion_matrix(gt, pred, 4))
    assert s.iou[1] == 0.0  # in ground truth, never predicted
    assert math.isnan(s.iou[2]) and math.isnan(s.iou[3])  # in neither
    assert s.miou == pytest.approx((1 / 3 + 0.0) / 2)


def test_empty_prediction_is_all_background():
    gt = np.array([[1, 1], [0, 0]])
    s = scores_from_confusion(confusion_matrix(gt, np.zeros_like(gt), 2))
    np.testing.assert_allclose(s.iou, [0.5, 0.0])
    assert s.pixel_acc == 0.5


def test_predicted_ignore_or_out_of_range_counts_as_background():
    gt = np.array([[0, 1]])
    cm = confusion_matrix(gt, np.array([[255, 7]]), 2)
    np.testing.assert_array_equal(cm, [[1, 0], [1, 0]])


def test_bad_ground_truth_ids_and_shapes_are_errors():
    with pytest.raises(ValueError, match=r"\[5\]"):
        confusion_matrix(np.array([[5]]), np.array([[0]]), 3)
    with pytest.raises(ValueError, match="prediction is"):
        confusion_matrix(np.zeros((2, 2)), np.zeros((2, 3)), 3)


def test_remap_prediction():
    pred = np.array([[0, 1, 2, 255]], np.uint8)
    np.testing.assert_array_equal(remap_prediction(pred, np.array([0, 5, 3])), [[0, 5, 3, 255]])


def _loop_iou(gts, preds, c):
    """Independent reference: plain Python counting, one pixel at a time."""
    tp = [0] * c
    fp = [0] * c
    fn = [0] * c
    for gt, pred in zip(gts, preds):
        for g, p in zip(gt.ravel().tolist(), pred.ravel().tolist()):
            if g == 255:
                continue
            p = p if 0 <= p < c else 0
            if g == p:
                tp[g] += 1
            else:
                fn[g] += 1
                fp[p] += 1
    return [tp[k] / (tp[k] + fp[k] + fn[k]) if tp[k] + fp[k] + fn[k] else float("nan") for k in range(c)]


@settings(max_examples=80, deadline=None)
@given(st.integers(2, 6), st.data())
def test_matches_plain_python_on_random_images(c, data):
    n = data.draw(st.integers(1, 3))
    shape = data.draw(st.tuples(st.integers(1, 12), st.integers(1, 12)))
    ids = st.sampled_from(list(range(c)) + [255])
    gts = [data.draw(arrays(np.uint8, shape, elements=ids)) for _ in range(n)]
    preds = [data.draw(arrays(np.uint8, shape, elements=st.sampled_from(list(range(c + 1)) + [255]))) for _ in range(n)]
    cm = sum(confusion_matrix(g, p, c) for g, p in zip(gts, preds))
    np.testing.assert_allclose(scores_from_confusion(cm).iou, _loop_iou(gts, preds, c), equal_nan=True)


# ------------------------------------------------------------------------------ mAP50 (COCOeval)


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
