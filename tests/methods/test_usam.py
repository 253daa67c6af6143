import numpy as np

from usam_ray.masks import masks_to_boxes, masks_to_rles
from usam_ray.methods.usam import LabelSettings, select_instances, semantic_map
from usam_ray.types import MaskSet


def _candidates():
    m = np.zeros((5, 10, 10), bool)
    m[0, 0:5, 0:5] = True          # class 1, 0.9
    m[1, 0:5, 0:4] = True          # overlaps 0 (IoU 0.8), class 0, 0.8 → suppressed
    m[2, 6:10, 6:10] = True        # class 2, 0.6
    m[3, 6:10, 0:4] = True         # below threshold
    m[4, 9, 9] = True              # too small
    probs = np.array([[0.05, 0.9, 0.05], [0.8, 0.1, 0.1], [0.2, 0.2, 0.6], [0.4, 0.3, 0.3], [0.0, 1.0, 0.0]])
    ms = MaskSet(masks_to_rles(m), masks_to_boxes(m), np.ones(5), data={"iou_pred": np.array([1, 1, 1, 1, 1.0])})
    return m, ms, probs


def test_threshold_nms_and_area():
    _m, ms, probs = _candidates()
    inst = select_instances(ms, probs, LabelSettings(score_threshold=0.5, nms_iou=0.5, min_area=2))
    assert inst.data["source_index"].tolist() == [0, 2]
    assert inst.class_ids.tolist() == [1, 2]
    np.testing.assert_allclose(inst.scores, [0.9, 0.6])
    looser = select_instances(ms, probs, LabelSettings(score_threshold=0.5, nms_iou=0.9, min_area=2))
    assert looser.data["source_index"].tolist() == [0, 1, 2]


def test_min_iou_pred_drops_unsure_masks():
    _m, ms, probs = _candidates()
    ms.data["iou_pred"] = np.array([0.2, 1, 1, 1, 1.0])
    inst = select_instances(ms, probs, LabelSettings(score_threshold=0.5, nms_iou=0.5, min_area=2, min_iou_pred=0.5))
    assert inst.data["source_index"].tolist() == [1, 2]


def test_semantic_map_higher_score_wins_and_ids_are_shifted():
    m, ms, probs = _candidates()
    inst = select_instances(ms, probs, LabelSettings(score_threshold=0.5, nms_iou=0.95, min_area=2))
    sem = semantic_map(inst, 10, 10)
    assert sem[0, 0] == 2  # mask 0 (class 1 → id 2, score 0.9) over mask 1 (class 0 → id 1, 0.8)
    assert sem[0, 4] == 2 and sem[7, 7] == 3 and sem[7, 1] == 0
    assert semantic_map(select_instances(ms, probs, LabelSettings(score_threshold=0.99)), 10, 10).max() == 0
