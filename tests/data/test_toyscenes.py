import json

import numpy as np
import pytest

from usam_ray.data.groundtruth import FolderGroundTruth
from usam_ray.masks import masks_to_boxes, rle_to_mask
from usam_ray.data.toyscenes import CLASSES, scene, single_object, write_scene_dataset, write_single_objects


def test_same_seed_same_scene_other_seed_other_scene():
    a = scene(np.random.default_rng(7))
    b = scene(np.random.default_rng(7))
    c = scene(np.random.default_rng(8))
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.semantic, b.semantic)
    assert not np.array_equal(a.image, c.image)


@pytest.mark.parametrize("seed", range(25))
def test_ground_truth_is_consistent(seed):
    sc = scene(np.random.default_rng(seed))
    assert sc.image.shape == (128, 128, 3) and sc.image.dtype == np.uint8
    assert len(sc.instances) == len(sc.classes) == len(sc.colours) >= 1
    # instances are disjoint, each inside the region of its own class, and cover that region exactly
    assert (sc.instances.sum(0) <= 1).all()
    for m, c in zip(sc.instances, sc.classes):
        assert m.sum() >= 30 and (sc.semantic[m] == c).all()
    union = sc.instances.any(0)
    assert ((sc.semantic > 0) == union).all()
    assert set(np.unique(sc.semantic)) <= set(range(len(CLASSES) + 1))


def test_scenes_have_variety():
    rng = np.random.default_rng(0)
    scenes = [scene(rng) for _ in range(60)]
    counts = [len(s.classes) for s in scenes]
    assert max(counts) >= 4 and min(counts) >= 1
    assert any(len(s.classes) > len(set(s.classes.tolist())) for s in scenes)  # repeated class in a scene
    seen = {int(c) for s in scenes for c in s.classes}
    assert seen == set(range(1, len(CLASSES) + 1))
    sizes = [int(m.sum()) for s in scenes for m in s.instances]
    assert max(sizes) > 4 * min(sizes)


def test_single_object_is_labelled_and_large():
    for k in range(1, len(CLASSES) + 1):
        sc = single_object(np.random.default_rng(k), cls=k)
        assert sc.classes.tolist() == [k] and sc.instances[0].mean() > 0.05


def test_written_dataset_loads_with_the_evaluators_reader(tmp_path):
    write_scene_dataset(tmp_path, 6, seed=3)
    gt = FolderGroundTruth(tmp_path)
    assert gt.classes == ["background", *CLASSES]
    recs = gt.records()
    assert [r["key"] for r in recs] == [f"scene_{i:05d}" for i in range(6)]
    assert all(r["image_path"].endswith(".png") for r in recs)
    coco = json.loads((tmp_path / "instances.json").read_text())
    for r, img in zip(recs, coco["images"]):
        sem = gt.load_semantic(r)
        anns = [a for a in coco["annotations"] if a["image_id"] == img["id"]]
        for a in anns:
            m = rle_to_mask(a["segmentation"])
            assert (sem[m] == a["category_id"]).all()
            x0, y0, x1, y1 = masks_to_boxes(m[None])[0]
            assert a["bbox"] == [x0, y0, x1 - x0, y1 - y0]


def test_single_objects_form_a_class_folder_source(tmp_path):
    from usam_ray.config import DataConfig
    from usam_ray.data.sources import list_source, parse_source

    write_single_objects(tmp_path, per_class=2, seed=0)
    listing = list_source(parse_source(f"classes:{tmp_path}"), DataConfig(), set())
    labels = sorted(json.loads(u["labels"])[0][0] for u in listing.units)
    assert labels == sorted(list(CLASSES) * 2)
