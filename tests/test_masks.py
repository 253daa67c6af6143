import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from usam_ray.masks import mask_iou, mask_nms, mask_to_rle, masks_to_boxes, masks_to_rles, rle_iou, rle_to_mask, rles_to_masks


@settings(max_examples=60, deadline=None)
@given(arrays(bool, st.tuples(st.integers(1, 5), st.integers(1, 40), st.integers(1, 40))))
def test_rle_round_trip(masks):
    rles = masks_to_rles(masks)
    assert len(rles) == masks.shape[0]
    assert all(r["size"] == list(masks.shape[1:]) for r in rles)
    np.testing.assert_array_equal(rles_to_masks(rles), masks)
    np.testing.assert_array_equal(rle_to_mask(mask_to_rle(masks[0])), masks[0])


def test_rle_counts_as_str_decode():
    m = np.zeros((5, 7), bool)
    m[1:3, 2:6] = True
    rle = mask_to_rle(m)
    as_str = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
    np.testing.assert_array_equal(rle_to_mask(as_str), m)


def test_boxes_exclusive_and_empty():
    m = np.zeros((2, 10, 12), bool)
    m[0, 2:5, 3:9] = True
    boxes = masks_to_boxes(m)
    np.testing.assert_array_equal(boxes[0], [3, 2, 9, 5])
    np.testing.assert_array_equal(boxes[1], [0, 0, 0, 0])


def test_iou_dense_matches_rle_and_hand_case():
    a = np.zeros((1, 4, 4), bool)
    b = np.zeros((1, 4, 4), bool)
    a[0, :2] = True  # 8 px
    b[0, 1:3] = True  # 8 px, 4 shared
    assert mask_iou(a, b)[0, 0] == pytest.approx(4 / 12)
    assert rle_iou(masks_to_rles(a), masks_to_rles(b))[0, 0] == pytest.approx(4 / 12)


def test_nms_drops_overlaps_keeps_disjoint():
    m = np.zeros((3, 10, 10), bool)
    m[0, :5, :5] = True
    m[1, :5, :4] = True  # IoU 0.8 with mask 0
    m[2, 6:, 6:] = True
    keep = mask_nms(masks_to_rles(m), np.array([0.9, 0.95, 0.1]), iou_threshold=0.5)
    assert keep.tolist() == [1, 2]
    assert mask_nms(masks_to_rles(m), np.array([0.9, 0.95, 0.1]), iou_threshold=0.85).tolist() == [1, 0, 2]


def test_nms_dense_and_rle_paths_agree_with_plain_greedy(monkeypatch):
    """Dense (matrix products) and RLE (pycocotools) comparisons keep the same masks as a plain
    greedy NMS over the full IoU matrix, on noisy masks with many overlaps."""
    import usam_ray.masks as masks_mod

    rng = np.random.default_rng(3)
    base = rng.random((1, 40, 30)) < 0.5
    m = np.concatenate([base ^ (rng.random((25, 40, 30)) < rng.uniform(0.02, 0.6, (25, 1, 1))),
                        rng.random((15, 40, 30)) < 0.3])
    rles, scores = masks_to_rles(m), rng.random(40)
    order = np.argsort(-scores, kind="stable")
    full = rle_iou(rles, rles)
    expected, dead = [], set()
    for i in order:
        if i in dead:
            continue
        expected.append(int(i))
        dead |= {int(j) for j in np.flatnonzero(full[i] > 0.5)}
    dense = mask_nms(rles, scores, 0.5).tolist()
    monkeypatch.setattr(masks_mod, "DENSE_NMS_BYTES", 0)
    assert dense == mask_nms(rles, scores, 0.5).tolist() == expected
    # what the masks were made to test: the 15 independent random masks overlap nothing above 0.5 (at most
    # ~0.3), so every one is kept; the 25 noisy copies of one mask overlap each other, so some are suppressed
    assert set(range(25, 40)) <= set(expected) and len(expected) < 40
