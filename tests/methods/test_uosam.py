"""UO-SAM's local and global region optimizers on constructed cases and with the shipped toy SAM."""

from pathlib import Path

import numpy as np
import pytest
import torch

from usam_ray.config import LabelSettings, SamConfig
from usam_ray.data.toyscenes import coarsen_labels, scene
from usam_ray.masks import masks_to_rles
from usam_ray.methods.sam_embed import SamMaskEmbedder, prepare_image
from usam_ray.methods.uosam import UoSam, confidence_map, grid_coverage, region_prompts
from usam_ray.types import MaskSet

ZOO = Path(__file__).parents[2] / "usam_ray" / "toyworld" / "zoo"


def _features(kind: np.ndarray, dim: int = 8) -> np.ndarray:
    """(dim, g, g) features: one direction per value of ``kind`` (g, g), plus a little noise."""
    rng = np.random.default_rng(0)
    basis = np.eye(dim, dtype=np.float32)
    feats = basis[kind].transpose(2, 0, 1) + 0.01 * rng.standard_normal((dim, *kind.shape)).astype(np.float32)
    return feats


def test_grid_coverage_follows_the_resize_and_pad():
    region = np.zeros((64, 32), bool)  # a tall image: resized to 128 × 64 inside a 128² pad
    region[:32, :] = True  # its top half
    cover = grid_coverage(region, (128, 64), 128, 16)
    assert cover.shape == (16, 16)
    assert np.allclose(cover[:8, :8], 1) and np.allclose(cover[8:, :], 0) and np.allclose(cover[:, 8:], 0)


def test_points_inside_and_outside_and_the_component_holding_the_positive_point():
    # a 128² image, grid 16 (8 px cells). Class 1 has two squares: a big one whose features match
    # most of the region (kind 1) and a small one of other features (kind 2). Background is kind 0,
    # except a patch of kind 3, opposite to the class.
    coarse = np.zeros((128, 128), np.uint8)
    coarse[16:64, 16:64] = 1  # big component
    coarse[96:112, 96:112] = 1  # small component
    kind = np.zeros((16, 16), int)
    kind[2:8, 2:8] = 1
    kind[12:14, 12:14] = 2
    kind[0:2, 12:16] = 3
    feats = _features(kind)
    feats[:, kind == 3] = -feats[:, kind == 1].mean(1, keepdims=True)  # opposite to the class
    s = confidence_map(feats, grid_coverage(coarse == 1, (128, 128), 128, 16) >= 0.5)
    assert s[4, 4] > s[13, 13] and s[0, 14] < s[9, 2]

    (p,) = region_prompts(coarse, feats, (128, 128), 128)
    x, y = p.positive
    assert coarse[y, x] == 1 and 16 <= x < 64 and 16 <= y < 64  # in the big square
    nx, ny = p.negative
    assert coarse[ny, nx] == 0 and ny < 16 and nx >= 96  # on the unlike patch, outside the class
    assert p.component[20, 20] and not p.component[100, 100]  # the component holding the positive point
    assert p.box == (16, 16, 63, 63)

    # every component: one prompt each, each positive point inside its own component
    both = region_prompts(coarse, feats, (128, 128), 128, every_component=True)
    assert len(both) == 2 and {b.box for b in both} == {(16, 16, 63, 63), (96, 96, 111, 111)}
    assert all(b.component[b.positive[1], b.positive[0]] for b in both)


def test_gro_vote_and_the_background_choice():
    lro = np.zeros((20, 20), np.uint8)
    lro[2:10, 2:10] = 1  # an object the automatic mask below mostly misses
    masks = np.zeros((3, 20, 20), bool)
    masks[0, 2:12, 2:12] = True  # 64 px of class 1 out of 100: class 1 wins, fills the mask
    masks[1, 12:20, 12:20] = True  # all background: nothing changes
    masks[2, 0:20, 0:9] = True  # 180 px, 49 of them class 1: background wins
    auto = MaskSet(masks_to_rles(masks), np.zeros((3, 4), np.float32), np.ones(3, np.float32))
    uo = UoSam(embedder=None, settings=LabelSettings(), background_votes=False)
    kept = uo.global_vote(lro, auto)
    assert (kept[2:12, 2:12] == 1).all() and kept[12:, 12:].max() == 0
    assert (uo.global_vote(lro, MaskSet(auto.masks[1:], auto.boxes[1:], auto.scores[1:])) == lro).all()
    uo.background_votes = True  # the reference: background out-votes mask 2 and erases most of the object
    erased = uo.global_vote(lro, MaskSet(auto.masks[1:], auto.boxes[1:], auto.scores[1:]))
    assert (erased[2:10, 2:9] == 0).all() and (erased[2:10, 9] == 1).all()


@pytest.fixture(scope="module")
def toy_sam():
    from usam_ray.models.registry import ResolvedModel, resolve
    from usam_ray.models.sam import load_sam, spec_with_arch

    r = resolve("sam:toy", ZOO)
    return SamMaskEmbedder(load_sam(ResolvedModel(spec_with_arch(r), r.location, r.local)), SamConfig(points_per_side=10))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_refinement_raises_iou_on_coarsened_toy_objects(toy_sam):
    """Blurred, blocky, eroded/dilated objects (``coarsen_labels``) get closer to the truth: the
    mean per-object IoU rises with LRO and again with GRO over 12 seeded scenes."""
    rng = np.random.default_rng(11)
    uo = UoSam(toy_sam, LabelSettings(min_iou_pred=0.5, nms_iou=0.5), every_component=True)
    before, lro, full = [], [], []
    for _ in range(12):
        sc = scene(rng, 128)
        coarse = coarsen_labels(sc.semantic, rng)
        padded, size = prepare_image(sc.image, 128)
        r = uo.refine_batch(padded[None], [size], [coarse])[0]
        for m, c in zip(sc.instances, sc.classes):
            before.append(_iou(coarse == c, m | (sc.semantic == c)))
            lro.append(_iou(r.lro == c, m | (sc.semantic == c)))
            full.append(_iou(r.semantic == c, m | (sc.semantic == c)))
    assert np.mean(lro) > np.mean(before) + 0.02, (np.mean(before), np.mean(lro))
    assert np.mean(full) > np.mean(before) + 0.04, (np.mean(before), np.mean(full))


def test_several_coarse_inputs_share_the_encoder_and_the_automatic_masks(toy_sam):
    """``refine_many`` gives each input what ``refine_batch`` gives it alone, with SAM's automatic
    masks made once per image however many inputs there are (None: nothing to do for that input)."""
    rng = np.random.default_rng(21)
    scenes = [scene(rng, 128) for _ in range(3)]
    padded = np.stack([prepare_image(sc.image, 128)[0] for sc in scenes])
    sizes = [prepare_image(sc.image, 128)[1] for sc in scenes]
    a = [coarsen_labels(sc.semantic, rng) for sc in scenes]
    b = [coarsen_labels(sc.semantic, rng) for sc in scenes]
    uo = UoSam(toy_sam, LabelSettings(min_iou_pred=0.5, nms_iou=0.5), every_component=True)
    alone = [uo.refine_batch(padded, sizes, a), uo.refine_batch(padded, sizes, b)]
    calls = []
    embed = toy_sam.embed_prepared
    uo.embedder.embed_prepared = lambda *args, **kw: calls.append(1) or embed(*args, **kw)
    try:
        together = uo.refine_many(padded, sizes, [a, [b[0], None, b[2]]])
    finally:
        del uo.embedder.embed_prepared
    assert len(calls) == 3  # one automatic-mask pass per image, not per input
    assert together[1][1] is None
    for j, i in [(0, 0), (0, 1), (0, 2), (1, 0), (1, 2)]:
        for field in ("lro", "semantic"):
            same = (getattr(together[j][i], field) == getattr(alone[j][i], field)).mean()
            assert same > 0.999, (j, i, field, same)


def test_a_blurred_square_gets_sharper(toy_sam):
    """One object of a toy scene, its mask blurred: LRO's two SAM passes raise its IoU."""
    import cv2

    rng = np.random.default_rng(3)
    sc = next(s for s in (scene(rng, 128) for _ in range(50)) if 2 in s.classes)  # a scene with a square
    truth = sc.semantic == 2
    blurred = cv2.GaussianBlur(truth.astype(np.float32), (0, 0), 4) > 0.3
    coarse = np.where(blurred, 2, 0).astype(np.uint8)
    padded, size = prepare_image(sc.image, 128)
    r = UoSam(toy_sam, LabelSettings(), use_global=False, every_component=True).refine_batch(padded[None], [size], [coarse])[0]
    assert _iou(r.lro == 2, truth) > _iou(blurred, truth) + 0.05
    assert r.scores and set(r.scores) == {2}


def test_point_prompts_are_untouched_by_the_prompt_finetune(toy_sam):
    """The shipped toy SAM learnt boxes, negative points and mask prompts (``finetune_sam_prompts``)
    through parameters a single positive point never uses."""
    from usam_ray.toyworld.toy_sam import PROMPT_ONLY_PARAMETERS

    sam = toy_sam.sam
    trained = [n for n, _ in sam.named_parameters() if n.startswith(PROMPT_ONLY_PARAMETERS)]
    assert len(trained) == 13
    coords = torch.tensor([[[40.0, 50.0]]])
    labels = torch.ones(1, 1, dtype=torch.int)
    with torch.no_grad():
        base_sparse, base_dense = sam.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        for n, p in sam.named_parameters():
            if n.startswith(PROMPT_ONLY_PARAMETERS):
                p.add_(1.0)
        sparse, dense = sam.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        for n, p in sam.named_parameters():
            if n.startswith(PROMPT_ONLY_PARAMETERS):
                p.sub_(1.0)
    assert torch.equal(sparse, base_sparse) and torch.equal(dense, base_dense)
