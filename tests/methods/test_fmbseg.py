"""FMbSeg per image: crops and stitching, presence, Stage 1.1 prompts, the seeded Stage 1.2 share,
pseudo label maps and patch targets, refinement and instances."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from usam_ray.config import FmbsegSettings
from usam_ray.masks import mask_to_rle, masks_to_rles, rles_to_masks
from usam_ray.methods.fmbseg import (
    STAGE_11, STAGE_12, FmbsegModels, crop_grid, instances_from_map, patch_targets, present_classes,
    pseudo_label_map, refine_with_masks, stage11, stage12_sample, stitch, top_patch_points,
)
from usam_ray.types import MaskSet


def test_a_feature_placed_in_a_crop_lands_in_its_map_cell():
    g, cells, e = 3, 4, 5
    maps = torch.zeros(g * g, cells, cells, e)
    maps[1 * g + 2, 0, 3, 1] = 1.0  # crop (row 1, col 2), its cell (0, 3)
    out = stitch(maps, g)
    assert out.shape == (g * cells, g * cells, e)
    assert out[1 * cells + 0, 2 * cells + 3, 1] == 1.0 and out.sum() == 1.0
    with pytest.raises(ValueError, match="4 crop maps for a 3x3 grid"):
        stitch(torch.zeros(4, 2, 2, 1), 3)


def test_crops_cut_the_oversampled_image_row_major_and_stitch_back():
    image = torch.zeros(3, 40, 60)
    image[:, 20:40, 40:60] = 1.0  # bottom-right block: crop (1, 2) of a 2x3 split... of a square grid
    crops = crop_grid(image, 2, 16)  # image squashed to 32x32, 4 crops of 16
    assert crops.shape == (4, 3, 16, 16)
    means = crops.mean((1, 2, 3))
    assert means.argmax() == 3 and means[0] < 0.05  # bottom-right crop is index 3
    restitched = stitch(crops.permute(0, 2, 3, 1), 2).permute(2, 0, 1)
    expected = F.interpolate(image[None], (32, 32), mode="bilinear", align_corners=False, antialias=True)[0]
    torch.testing.assert_close(restitched, expected)


def test_presence_needs_more_than_threshold_crops():
    text = torch.eye(3)
    crop_cls = torch.tensor([[1.0, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1], [0, 0, 1]])
    assert present_classes(crop_cls, text, 1) == [0, 2]
    assert present_classes(crop_cls, text, 0) == [0, 1, 2]


def test_top_patches_are_the_most_similar_cells_centres():
    m = torch.zeros(4, 4, 2)
    m[..., 0] = 1.0
    m[2, 1] = torch.tensor([0.0, 1.0])
    m[3, 3] = torch.tensor([0.6, 0.8])
    pts = top_patch_points(m, torch.tensor([0.0, 1.0]), 2)
    np.testing.assert_allclose(pts, [[1.5 / 4, 2.5 / 4], [3.5 / 4, 3.5 / 4]])


def test_stage11_prompts_fall_inside_the_object_and_sam_finds_it():
    from usam_ray.data.toyscenes import CLASSES, scene
    from usam_ray.methods.sam_embed import SamMaskEmbedder, prepare_image
    from usam_ray.models import resolve
    from usam_ray.models.clip import load_clip
    from usam_ray.models.registry import get_spec
    from usam_ray.models.sam import load_sam

    rng = np.random.default_rng(3)
    sc = next(s for s in (scene(rng, 128) for _ in range(50)) if len(s.instances) >= 2)
    models = FmbsegModels(load_clip(resolve("clip:toy")), get_spec("clip:toy"),
                          SamMaskEmbedder(load_sam(resolve("sam:toy"))), None, None, CLASSES, FmbsegSettings())
    target, cls = sc.instances[0], int(sc.classes[0]) - 1
    # a constructed CLIP map: cells over the object point along the class's text, others away from it
    side = 32
    cover = F.interpolate(torch.as_tensor(target, dtype=torch.float32)[None, None], (side, side), mode="area")[0, 0]
    away = F.normalize(torch.randn(models.text.shape[1]), dim=0)
    clip_map = F.normalize(cover[..., None] * models.text[cls] + (1 - cover[..., None]) * away, dim=-1)
    padded, size = prepare_image(sc.image, 128)
    with torch.inference_mode():
        features = models.embedder.encode(padded[None], [size])
    out = stage11(models, features, clip_map, [cls], size, sc.image.shape[:2])
    points = out.data["points"][0]
    assert all(target[int(y), int(x)] for x, y in points)
    mask = rles_to_masks(out.masks)[0]
    assert (mask & target).sum() / (mask | target).sum() > 0.5
    assert out.class_ids.tolist() == [cls]


def test_the_stage12_share_is_seeded_per_image():
    a = stage12_sample("img/001", 8, 0.75, seed=0)
    assert a.sum() == 6 and np.array_equal(a, stage12_sample("img/001", 8, 0.75, seed=0))
    others = [stage12_sample("img/001", 8, 0.75, seed=s) for s in range(1, 6)]
    assert any(not np.array_equal(a, o) for o in others)
    assert stage12_sample("x", 5, 1.0, 0).all() and not stage12_sample("x", 5, 0.0, 0).any()


def _mask(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_pseudo_label_map_paints_stage11_over_stage12_and_leaves_background():
    big = _mask(16, 16, 0, 12, 0, 12)
    small = _mask(16, 16, 4, 8, 4, 8)
    ms = MaskSet(masks_to_rles(np.stack([small, big])), np.zeros((2, 4)), np.ones(2), np.array([0, 1]),
                 {"stage": np.array([STAGE_11, STAGE_12], np.int8)})
    out = pseudo_label_map(ms, np.array([True, True]), 16, 16)
    assert out[5, 5] == 1 and out[1, 1] == 2 and out[14, 14] == 0
    assert (pseudo_label_map(ms, np.array([True, False]), 16, 16) == 1).sum() == 16


def test_patch_targets_take_each_cells_majority():
    label = np.zeros((32, 32), np.uint8)
    label[0:16, 0:10] = 2  # cell (0, 0) of a 2x2 grid: 160 of 256 pixels are class 2
    label[16:32, 16:20] = 1  # cell (1, 1): 64 of 256, background wins
    assert patch_targets(label, 2, 2).tolist() == [2, 0, 0, 0]


def test_refinement_votes_inside_sam_masks_and_instances_are_components():
    base = np.zeros((20, 20), np.uint8)
    base[2:10, 2:10] = 1
    base[2:10, 8:10] = 2  # a sliver of the wrong class inside the object
    base[14:18, 14:18] = 1
    obj = _mask(20, 20, 2, 10, 2, 10)
    refined = refine_with_masks(base, MaskSet([mask_to_rle(obj)], np.zeros((1, 4)), np.ones(1)))
    assert (refined[obj] == 1).all() and refined[15, 15] == 1
    inst = instances_from_map(refined)
    assert inst.class_ids.tolist() == [0, 0] and sorted(int(m.sum()) for m in rles_to_masks(inst.masks)) == [16, 64]


def test_label_image_base_is_the_nearest_prototype_and_refined_fixes_a_stray_patch():
    from usam_ray.config import LabelSettings
    from usam_ray.heads.align import AlignmentHead
    from usam_ray.methods.fmbseg import label_image, label_image_variants, training_masks

    protos = F.normalize(torch.eye(3), dim=-1)  # background, class 0, class 1
    head = AlignmentHead(3, 3, "linear")
    with torch.no_grad():  # identity: a patch's feature is where it lands
        head.out.weight.copy_(torch.eye(3))
        head.out.bias.zero_()
    grid = np.zeros((4, 4), np.int64)
    grid[0:2, 0:2] = 1  # class 0 top-left
    grid[2:4, 2:4] = 2  # class 1 bottom-right
    grid[3, 3] = 0  # one stray background patch inside class 1
    feats = protos[torch.as_tensor(grid.reshape(-1))]
    settings = LabelSettings(min_area=1)
    inst, sem = label_image(head, protos, feats, 32, 32, None, settings)
    assert sem.shape == (32, 32) and sem[4, 4] == 1 and sem[20, 20] == 2 and sem[28, 28] == 0 and sem[4, 28] == 0
    assert sorted(inst.class_ids.tolist()) == [0, 1] and (inst.scores > 0.5).all()
    square = np.zeros((1, 32, 32), bool)
    square[0, 16:, 16:] = True
    auto = MaskSet(masks_to_rles(square), np.array([[16, 16, 31, 31]], np.float32), np.ones(1, np.float32),
                   data={"iou_pred": np.ones(1, np.float32)})
    _inst, refined = label_image(head, protos, feats, 32, 32, auto, settings)
    assert (refined[16:, 16:] == 2).all() and (refined[:16] == sem[:16]).all()
    # refined and base from one pass (label --refined --base-out): the same as one call each
    (inst_r, both_r), (inst_b, both_b) = label_image_variants(head, protos, feats, 32, 32, [auto, None], settings)
    assert (both_r == refined).all() and (both_b == sem).all() and not (both_r == both_b).all()
    assert inst_b.masks == inst.masks and np.allclose(inst_b.scores, inst.scores)
    assert len(inst_r) == len(_inst) and np.allclose(inst_r.scores, _inst.scores)
    # training masks: every 1.1 mask, a seeded share of 1.2
    stage = np.array([11, 12, 12, 12, 12, 11], np.int8)
    keep = training_masks("img.png", stage, 0.5, 0)
    assert keep[[0, 5]].all() and keep[1:5].sum() == 2
    assert (keep == training_masks("img.png", stage, 0.5, 0)).all()
