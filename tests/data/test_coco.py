"""COCO dataset and results files: load in pycocotools against each other and against a ground
truth of the same images; polygons for CVAT; fields the importers need."""

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from usam_ray.data.coco import coco_dataset, coco_results, image_ids, key_by_image_id, mask_to_polygons
from usam_ray.masks import mask_to_rle, masks_to_boxes

CLASSES = ["cat", "dog"]


def _rows(seed: int = 0):
    """Three images (one without instances) and their instance rows, masks with a hole and two parts."""
    rng = np.random.default_rng(seed)
    images, instances, masks = [], [], {}
    for i, key in enumerate(["b/img2", "a/img1", "c/empty"]):
        h, w = 40 + 10 * i, 60
        images.append({"image_id": key, "file_name": key + ".jpg", "height": h, "width": w, "instances": 0})
        if key == "c/empty":
            continue
        for k in range(2):
            m = np.zeros((h, w), bool)
            y, x = int(rng.integers(2, 15)), int(rng.integers(2, 30))
            m[y:y + 20, x:x + 25] = True
            if k == 0:
                m[y + 5:y + 10, x + 5:x + 12] = False  # a hole
                m[h - 3:h - 1, w - 4:w - 1] = True  # a second part
            rle = mask_to_rle(m)
            box = masks_to_boxes(m[None])[0]
            instances.append({"image_id": key, "class_id": k + 1, "class_name": CLASSES[k], "score": 0.9 - 0.1 * k,
                              "height": h, "width": w, "counts": rle["counts"], "box": box.tolist(),
                              "provenance": "usam"})
            masks[(key, k)] = m
    return images, instances, masks


def _load(tmp_path, name, data) -> COCO:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return COCO(str(path))


def test_dataset_and_results_load_in_pycocotools_and_score_perfectly_against_each_other(tmp_path):
    images, instances, _ = _rows()
    data = coco_dataset(images, instances, CLASSES)
    ids = image_ids(im["image_id"] for im in images)
    assert ids == {"a/img1": 1, "b/img2": 2, "c/empty": 3}  # sorted keys, whatever the order given
    assert all(isinstance(im["id"], int) for im in data["images"]) and len(data["images"]) == 3
    gt = _load(tmp_path, "coco_dataset.json", data)
    dets = gt.loadRes(coco_results(data))  # the ids match: "Results do not correspond" would raise
    ev = COCOeval(gt, dets, "segm")
    ev.evaluate(), ev.accumulate(), ev.summarize()
    assert ev.stats[1] == pytest.approx(1.0)  # AP50 of the labels against themselves
    # bbox is COCO's xywh, equal to what pycocotools computes from the mask
    for ann in data["annotations"]:
        expected = mask_utils.toBbox(ann["segmentation"]).tolist()
        assert ann["bbox"] == pytest.approx(expected)
        assert ann["area"] == int(mask_utils.area(ann["segmentation"]))
        assert ann["iscrowd"] == 0 and ann["provenance"] == "usam" and 0 < ann["score"] <= 1
    assert key_by_image_id(data) == {v: k for k, v in ids.items()}


def test_results_score_against_a_ground_truth_of_the_same_images(tmp_path):
    """Against another tool's COCO ground truth of the same files, our results map by file name."""
    images, instances, masks = _rows()
    data = coco_dataset(images, instances, CLASSES)
    # a ground truth with its own ids (100+) and category ids (5, 9) for the same files
    theirs = {"images": [{"id": 100 + im["id"], "file_name": im["file_name"], "height": im["height"],
                          "width": im["width"]} for im in data["images"]],
              "categories": [{"id": 5, "name": "cat"}, {"id": 9, "name": "dog"}], "annotations": []}
    by_file = {im["file_name"]: im["id"] for im in theirs["images"]}
    for (key, k), m in masks.items():
        rle = mask_to_rle(m)
        theirs["annotations"].append({"id": len(theirs["annotations"]) + 1, "image_id": by_file[key + ".jpg"],
                                      "category_id": (5, 9)[k], "iscrowd": 0, "area": int(m.sum()),
                                      "bbox": mask_utils.toBbox(rle).tolist(),
                                      "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}})
    gt = _load(tmp_path, "theirs.json", theirs)
    ours = {im["id"]: im["file_name"] for im in data["images"]}
    cats = {c["id"]: c["name"] for c in data["categories"]}
    name_to_theirs = {c["name"]: c["id"] for c in theirs["categories"]}
    results = [{**r, "image_id": by_file[ours[r["image_id"]]], "category_id": name_to_theirs[cats[r["category_id"]]]}
               for r in coco_results(data)]
    ev = COCOeval(gt, gt.loadRes(results), "segm")
    ev.evaluate(), ev.accumulate(), ev.summarize()
    assert ev.stats[1] == pytest.approx(1.0)


def test_polygons_decode_back_to_the_mask_with_holes_filled_and_counted(tmp_path):
    images, instances, masks = _rows()
    data = coco_dataset(images, instances, CLASSES, segmentation="polygons")
    gt = _load(tmp_path, "poly.json", data)  # pycocotools reads polygons
    anns = {(im["usam_ray_key"], a["category_id"] - 1): a for im in data["images"] for a in data["annotations"]
            if a["image_id"] == im["id"]}
    for (key, k), m in masks.items():
        ann = anns[(key, k)]
        decoded = gt.annToMask(ann).astype(bool)
        filled = m.copy()
        if k == 0:  # the hole is filled, and said so
            filled[decoded & ~m] = True
            assert ann["holes"] == 1 and (decoded & ~m).sum() == 35
            assert len(ann["segmentation"]) == 2  # two parts, two polygons
        np.testing.assert_array_equal(decoded, filled)
        assert all(len(p) >= 6 and len(p) % 2 == 0 for p in ann["segmentation"])
    assert data["info"]["dropped_annotations"] == 0


def test_fields_the_annotation_tools_importers_require():
    """CVAT's COCO importer (Datumaro's coco_instances format) and Label Studio's COCO importer read
    images {id, file_name, width, height}, categories {id, name}, annotations {id, image_id,
    category_id, segmentation (polygons: list of flat x,y lists, at least 3 points), bbox [x, y, w, h],
    area, iscrowd}; Datumaro reads an RLE segmentation only with iscrowd = 1, so the polygon file is
    the one for CVAT."""
    images, instances, _ = _rows()
    for seg in ("rle", "polygons"):
        data = coco_dataset(images, instances, CLASSES, segmentation=seg)
        assert set(data) >= {"images", "annotations", "categories"}
        for im in data["images"]:
            assert {"id", "file_name", "width", "height"} <= set(im) and isinstance(im["id"], int)
        assert [c["name"] for c in data["categories"]] == CLASSES and [c["id"] for c in data["categories"]] == [1, 2]
        image_set = {im["id"] for im in data["images"]}
        for a in data["annotations"]:
            assert {"id", "image_id", "category_id", "segmentation", "bbox", "area", "iscrowd"} <= set(a)
            assert a["image_id"] in image_set and len(a["bbox"]) == 4 and a["bbox"][2] > 0 and a["bbox"][3] > 0
            if seg == "polygons":
                assert isinstance(a["segmentation"], list) and all(len(p) >= 6 for p in a["segmentation"])
            else:
                assert set(a["segmentation"]) == {"size", "counts"} and isinstance(a["segmentation"]["counts"], str)
        assert len({a["id"] for a in data["annotations"]}) == len(data["annotations"])


def test_mask_to_polygons_edge_cases():
    assert mask_to_polygons(np.zeros((5, 5), bool)) == ([], 0)
    one = np.zeros((5, 5), bool)
    one[2, 2] = True  # a single pixel still gets a polygon that covers it
    polys, holes = mask_to_polygons(one)
    assert holes == 0 and len(polys) == 1
    assert mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polys, 5, 5))).astype(bool).tolist() == one.tolist()
    with pytest.raises(ValueError, match="instance of image"):
        coco_dataset([], _rows()[1], CLASSES)
