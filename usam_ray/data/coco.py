"""Instances → COCO files that annotation tools and pycocotools import.

- ``coco_dataset``: a COCO *dataset* (``images`` with integer ids, file names and sizes;
  ``annotations`` with segmentation, **xywh** ``bbox``, ``area``, ``iscrowd``, plus ``score`` and
  ``provenance`` as extra fields that importers ignore; ``categories``). Segmentation is COCO
  RLE (``{"size": [h, w], "counts": str}``: exact, what pycocotools and FiftyOne read), or
  polygons (``segmentation="polygons"``: what CVAT's and Label Studio's COCO importers take —
  CVAT reads RLE only as crowd regions). Polygons cannot hold holes: a hole is filled and the
  annotation's ``holes`` field says how many were; the RLE file keeps them.
- ``coco_results``: the same annotations as a COCO *results* list keyed by the dataset's image
  ids, for ``COCO.loadRes`` and COCOeval.

Image ids are 1…N over the images' keys in sorted order, so the same labelled images always get
the same ids, whatever order they were labelled in.
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

import numpy as np


def image_ids(keys: Iterable[str]) -> dict[str, int]:
    """Key → COCO image id: 1…N in sorted key order."""
    return {k: i + 1 for i, k in enumerate(sorted(set(keys)))}


def xyxy_to_xywh(box: Sequence[float]) -> list[float]:
    """``[x1, y1, x2, y2]`` (x2/y2 exclusive) → COCO ``[x, y, width, height]``."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]


def mask_to_polygons(mask: np.ndarray, tolerance: float = 0.0) -> tuple[list[list[float]], int]:
    """Outer contours of a (H, W) bool mask as COCO polygons ``[x1, y1, x2, y2, …]``, and the
    number of holes (which polygons cannot hold). The contours run a quarter pixel inside the
    mask's pixel edges, around every pixel centre, so rasterising them (pycocotools) gives the
    mask back, holes filled.

    Args:
        mask (np.ndarray): (H, W) bool.
        tolerance (float): Douglas–Peucker simplification in pixels (0: every corner kept).

    Returns:
        (polygons with at least 3 points each, holes).
    """
    import cv2

    m = np.ascontiguousarray(mask, dtype=np.uint8)
    # trace on a 2x upsampled mask: one-pixel-wide parts keep an area, and the contour passes a
    # quarter pixel inside each edge instead of through the boundary pixels' centres
    big = np.kron(m, np.ones((2, 2), np.uint8))
    contours, hierarchy = cv2.findContours(big, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    polygons, holes = [], 0
    if hierarchy is None:
        return polygons, holes
    for contour, (_next, _prev, _child, parent) in zip(contours, hierarchy[0]):
        if parent != -1:
            holes += 1
            continue
        if tolerance > 0:
            contour = cv2.approxPolyDP(contour, 2 * tolerance, True)
        pts = contour.reshape(-1, 2).astype(np.float64)
        if len(pts) < 3:
            continue
        pts = (pts + 0.5) / 2.0  # centre of 2x pixel k, in original pixel coordinates
        polygons.append([round(float(v), 2) for v in pts.reshape(-1)])
    return polygons, holes


def coco_categories(classes: Sequence[str]) -> list[dict]:
    """COCO categories for classes (without background): ids 1…C in order."""
    return [{"id": i + 1, "name": name, "supercategory": "object"} for i, name in enumerate(classes)]


def coco_dataset(images: Sequence[dict], instances: Sequence[dict], classes: Sequence[str],
                 segmentation: str = "rle", description: str = "usam-ray labels") -> dict:
    """A COCO dataset dict.

    Args:
        images (Sequence[dict]): labelled-image rows (``image_id`` key, ``file_name``, ``height``,
            ``width``), as in ``data/schema.py`` LABELLED_IMAGES_SCHEMA.
        instances (Sequence[dict]): instance rows (INSTANCES_SCHEMA: ``image_id`` key, ``class_id``
            1-based, ``score``, ``height``, ``width``, ``counts`` bytes, ``box`` xyxy, ``provenance``).
        classes (Sequence[str]): class names without background; category id = class id.
        segmentation (str): ``rle`` or ``polygons``.
        description (str): the ``info.description``.

    Returns:
        dict with ``info``, ``licenses``, ``images``, ``annotations``, ``categories``; an instance
        whose mask has no polygon of 3 points (``polygons`` only) is left out and counted in
        ``info.dropped_annotations``.

    Raises:
        ValueError: an instance of an image that is not in ``images``, or an unknown ``segmentation``.
    """
    from pycocotools import mask as mask_utils

    if segmentation not in ("rle", "polygons"):
        raise ValueError(f"segmentation must be rle or polygons, not {segmentation!r}")
    ids = image_ids(im["image_id"] for im in images)
    out_images = [{"id": ids[im["image_id"]], "file_name": im["file_name"], "height": int(im["height"]),
                   "width": int(im["width"]), "usam_ray_key": im["image_id"]}
                  for im in sorted(images, key=lambda im: ids[im["image_id"]])]
    annotations, dropped = [], 0
    for row in sorted(instances, key=lambda r: (ids.get(r["image_id"], 0), -float(r["score"]))):
        if row["image_id"] not in ids:
            raise ValueError(f"instance of image {row['image_id']!r} that is not among the labelled images")
        rle = {"size": [int(row["height"]), int(row["width"])], "counts": bytes(row["counts"])}
        ann = {"id": len(annotations) + 1, "image_id": ids[row["image_id"]], "category_id": int(row["class_id"]),
               "bbox": [round(v, 2) for v in xyxy_to_xywh(row["box"])], "area": int(mask_utils.area(rle)),
               "iscrowd": 0, "score": float(row["score"]), "provenance": row.get("provenance", "")}
        if segmentation == "rle":
            ann["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
        else:
            polygons, holes = mask_to_polygons(mask_utils.decode(rle).astype(bool))
            if not polygons:
                dropped += 1
                continue
            ann["segmentation"] = polygons
            if holes:
                ann["holes"] = holes
        annotations.append(ann)
    info = {"description": description, "segmentation": segmentation, "bbox_format": "xywh",
            "dropped_annotations": dropped}
    return {"info": info, "licenses": [], "images": out_images, "annotations": annotations,
            "categories": coco_categories(classes)}


def coco_results(dataset: dict) -> list[dict]:
    """The dataset's annotations as a COCO results list (same image and category ids). Scores are
    kept at full precision: rounding them reorders ties and moves COCOeval's AP."""
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "segmentation": a["segmentation"],
             "bbox": a["bbox"], "score": a["score"]} for a in dataset["annotations"]]


def key_by_image_id(dataset: Optional[dict]) -> dict[int, str]:
    """COCO image id → our image key, from a dataset written by ``coco_dataset``."""
    if not dataset:
        return {}
    return {int(im["id"]): im.get("usam_ray_key") or im["file_name"].rsplit(".", 1)[0] for im in dataset["images"]}
