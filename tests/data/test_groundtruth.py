import json

import numpy as np
import pytest

from gt_fixtures import save_label, write_coco, write_voc
from usam_ray.data.groundtruth import (
    CocoGroundTruth, FolderGroundTruth, GroundTruthError, VocGroundTruth, image_key, parse_gt, read_label_png,
)
from usam_ray.masks import rle_to_mask


def test_voc_reader(tmp_path):
    names = write_voc(tmp_path / "VOC2012", n=3)
    gt = parse_gt(f"voc:{tmp_path}")  # a VOCdevkit-like parent works too
    assert isinstance(gt, VocGroundTruth) and len(gt.classes) == 21 and gt.classes[0] == "background"
    recs = gt.records()
    assert [r["key"] for r in recs] == names
    sem = gt.load_semantic(recs[0])
    assert sem.shape == (recs[0]["height"], recs[0]["width"]) and 255 in sem  # boundaries kept as ignore
    insts = gt.instances_for(recs[0])
    assert insts and all(1 <= a["category_id"] <= 20 for a in insts)
    for a in insts:  # every instance lies inside its class region
        m = rle_to_mask(a["segmentation"])
        assert (sem[m] == a["category_id"]).all()


def test_voc_missing_split_is_clear(tmp_path):
    with pytest.raises(GroundTruthError, match="val.txt"):
        VocGroundTruth(tmp_path)


def test_coco_semantic_rendering_rules(tmp_path):
    h, w = 10, 10
    big = np.zeros((h, w), bool)
    big[0:8, 0:8] = True
    small = np.zeros((h, w), bool)
    small[2:4, 2:4] = True
    crowd = np.zeros((h, w), bool)
    crowd[6:10, 6:10] = True
    from usam_ray.masks import mask_to_rle

    def rle(m):
        r = mask_to_rle(m)
        return {"size": r["size"], "counts": r["counts"].decode()}

    data = {
        "images": [{"id": 5, "file_name": "a/b.jpg", "height": h, "width": w}],
        "annotations": [
            {"id": 2, "image_id": 5, "category_id": 40, "segmentation": rle(small), "area": 4, "iscrowd": 0},
            {"id": 1, "image_id": 5, "category_id": 9, "segmentation": rle(big), "area": 64, "iscrowd": 0},
            {"id": 3, "image_id": 5, "category_id": 9, "segmentation": rle(crowd), "area": 16, "iscrowd": 1},
        ],
        "categories": [{"id": 40, "name": "cup"}, {"id": 9, "name": "boat"}],
    }
    (tmp_path / "ann.json").write_text(json.dumps(data))
    gt = parse_gt(f"coco:{tmp_path / 'ann.json'}:{tmp_path}")
    assert gt.classes == ["background", "boat", "cup"]  # ascending category id
    (rec,) = gt.records()
    assert rec["key"] == "a/b"
    sem = gt.load_semantic(rec)
    assert (sem[2:4, 2:4] == 2).all()  # the smaller instance wins the overlap
    assert sem[0, 0] == 1 and sem[9, 0] == 0
    assert (sem[8:10, 8:10] == 255).all()  # crowd outside instances is ignore
    assert sem[7, 7] == 1  # instances win over crowd
    coco = gt.coco_dict()
    assert {a["category_id"] for a in coco["annotations"]} == {1, 2}


def test_coco_polygons_render(tmp_path):
    data = write_coco(tmp_path / "ann.json", n=4)
    gt = CocoGroundTruth(tmp_path / "ann.json")
    recs = gt.records()
    assert len(recs) == 4 and gt.classes == ["background", "cat", "dog", "bird"]
    for r in recs:
        sem = gt.load_semantic(r)
        assert sem.shape == (r["height"], r["width"]) and sem.max() > 0
    assert data["images"][0]["id"] == recs[0]["coco_id"]


def test_folder_reader_and_errors(tmp_path):
    with pytest.raises(GroundTruthError, match="classes.txt"):
        FolderGroundTruth(tmp_path)
    (tmp_path / "classes.txt").write_text("background\nstar\nring\n")
    save_label(np.array([[0, 1], [2, 255]]), tmp_path / "masks" / "s" / "x.png")
    gt = parse_gt(f"folder:{tmp_path}")
    (rec,) = gt.records()
    assert rec["key"] == "s/x" and gt.classes == ["background", "star", "ring"]
    np.testing.assert_array_equal(gt.load_semantic(rec), [[0, 1], [2, 255]])


def test_label_png_must_hold_ids_not_colours(tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(GroundTruthError, match="mode RGB"):
        read_label_png(tmp_path / "rgb.png")


def test_parse_gt_errors_and_keys():
    with pytest.raises(GroundTruthError, match="unknown ground truth kind"):
        parse_gt("cityscapes:/x")
    assert image_key("sub/img.JPG") == "sub/img" and image_key("2007_000033") == "2007_000033"
