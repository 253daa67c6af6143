"""Device-side post-processing: RLE equal to pycocotools, boxes, stability, memory-bounded chunks."""

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from usam_ray.masks import masks_to_boxes
from usam_ray.methods.sam_post import chunk_size, mask_boxes, rle_encode, run_lengths, stability_scores
from usam_ray.data.toyscenes import scene


def _coco(masks: np.ndarray) -> list[dict]:
    return mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))


@pytest.mark.parametrize("shape, density", [((7, 13, 9), 0.5), ((5, 1, 40), 0.3), ((4, 33, 1), 0.7),
                                            ((9, 64, 48), 0.05), ((3, 2, 2), 0.5)])
def test_rle_equals_pycocotools_on_random_masks(shape, density):
    rng = np.random.default_rng(sum(shape))
    masks = rng.random(shape) < density
    masks[0] = False  # empty
    masks[1] = True   # full: the counts start with an empty run of zeros
    ours = rle_encode(torch.as_tensor(masks))
    ref = _coco(masks)
    assert [r["counts"] for r in ours] == [r["counts"] for r in ref]
    assert all(r["size"] == [shape[1], shape[2]] for r in ours)
    assert all(int(r.sum()) == shape[1] * shape[2] for r in run_lengths(torch.as_tensor(masks)))


def test_rle_equals_pycocotools_on_real_masks():
    """Toy-world instance masks (shapes with holes: rings, occluded objects)."""
    masks = np.concatenate([scene(np.random.default_rng(s), size=160).instances for s in range(8)])
    assert len(masks) > 10
    ours = rle_encode(torch.as_tensor(masks))
    assert [r["counts"] for r in ours] == [r["counts"] for r in _coco(masks)]


def test_rle_of_no_masks():
    assert rle_encode(torch.zeros((0, 5, 5), dtype=torch.bool)) == []


def test_boxes_match_numpy_boxes():
    masks = np.concatenate([scene(np.random.default_rng(s)).instances for s in range(3)] + [np.zeros((1, 128, 128), bool)])
    np.testing.assert_array_equal(mask_boxes(torch.as_tensor(masks)).numpy(), masks_to_boxes(masks))


def test_stability_is_iou_of_the_two_thresholds_and_zero_when_empty():
    logits = torch.tensor([[[2.0, 0.5], [-0.5, -3.0]], [[-5.0, -5.0], [-5.0, -5.0]]])
    # high (> 1): 1 pixel; low (> -1): 3 pixels → 1/3; the second is empty at both thresholds → 0
    np.testing.assert_allclose(stability_scores(logits, 0.0, 1.0).numpy(), [1 / 3, 0.0])


@pytest.mark.parametrize("n, size, budget, limit, expected", [
    (100, (375, 500), 1 << 26, 256, 64),      # 1024² per mask dominates: 64 masks of 1024² = 2**26
    (100, (8000, 8000), 1 << 26, 256, 1),     # huge image: one mask at a time
    (100, (375, 500), 1 << 30, 16, 16),       # the mask_chunk limit
    (3, (50, 50), 1 << 26, 256, 3),           # never more than there are
])
def test_chunk_size_bounds_memory(n, size, budget, limit, expected):
    assert chunk_size(n, 1024, size, budget, limit) == expected
