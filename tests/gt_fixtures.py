"""Writers of tiny ground-truth datasets (VOC layout, COCO JSON, generic folder) and predictions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from usam_ray.masks import mask_to_rle


def voc_palette() -> list[int]:
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


def save_label(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(arr.astype(np.uint8), "P")
    img.putpalette(voc_palette())
    img.save(path)


def random_scene(rng, h, w, num_classes, n_objects=3):
    """Semantic + object maps with rectangles of random classes and a 255 boundary ring."""
    sem = np.zeros((h, w), np.uint8)
    obj = np.zeros((h, w), np.uint8)
    for k in range(1, n_objects + 1):
        y0, x0 = int(rng.integers(0, h - 6)), int(rng.integers(0, w - 6))
        y1, x1 = y0 + int(rng.integers(4, max(5, h // 2))), x0 + int(rng.integers(4, max(5, w // 2)))
        cls = int(rng.integers(1, num_classes))
        sem[y0:y1, x0:x1] = cls
        obj[y0:y1, x0:x1] = k
    edge = np.zeros_like(sem, bool)
    edge[1:] |= obj[1:] != obj[:-1]
    edge[:, 1:] |= obj[:, 1:] != obj[:, :-1]
    sem[edge] = 255
    obj[edge] = 255
    return sem, obj


def write_voc(root: Path, n: int = 8, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    names = [f"2007_{i:06d}" for i in range(n)]
    for name in names:
        h, w = int(rng.integers(20, 40)), int(rng.integers(20, 40))
        sem, obj = random_scene(rng, h, w, 21)
        save_label(sem, root / "SegmentationClass" / f"{name}.png")
        save_label(obj, root / "SegmentationObject" / f"{name}.png")
        (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{name}.jpg")
    (root / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(names) + "\n")
    return names


def write_coco(path: Path, n: int = 10, seed: int = 0, categories=((1, "cat"), (3, "dog"), (7, "bird"))) -> dict:
    """A COCO instances JSON with RLE, polygon and crowd annotations; non-contiguous category ids."""
    rng = np.random.default_rng(seed)
    images, anns = [], []
    for i in range(n):
        h, w = int(rng.integers(24, 48)), int(rng.integers(24, 48))
        images.append({"id": 100 + i, "file_name": f"im{i:03d}.jpg", "height": h, "width": w})
        for k in range(int(rng.integers(1, 4))):
            m = np.zeros((h, w), bool)
            y0, x0 = int(rng.integers(0, h - 8)), int(rng.integers(0, w - 8))
            m[y0:y0 + int(rng.integers(5, h // 2 + 6)), x0:x0 + int(rng.integers(5, w // 2 + 6))] = True
            rle = mask_to_rle(m)
            cat = categories[int(rng.integers(0, len(categories)))][0]
            seg = {"size": rle["size"], "counts": rle["counts"].decode()}
            if k == 1:  # a polygon instead
                ys, xs = np.nonzero(m)
                x0p, y0p, x1p, y1p = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
                seg = [[float(x0p), float(y0p), float(x1p), float(y0p), float(x1p), float(y1p), float(x0p), float(y1p)]]
            anns.append({"id": len(anns) + 1, "image_id": 100 + i, "category_id": cat, "segmentation": seg,
                         "area": int(m.sum()), "bbox": [x0, y0, 5, 5], "iscrowd": 0})
        if i % 4 == 0:  # a crowd region
            m = np.zeros((h, w), bool)
            m[:4, :6] = True
            rle = mask_to_rle(m)
            anns.append({"id": len(anns) + 1, "image_id": 100 + i, "category_id": categories[0][0],
                         "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}, "area": 24,
                         "bbox": [0, 0, 6, 4], "iscrowd": 1})
    data = {"images": images, "annotations": anns,
            "categories": [{"id": c, "name": name} for c, name in categories]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return data


def noisy_predictions(gt_maps: dict[str, np.ndarray], out: Path, num_classes: int, seed: int = 1,
                      flip: float = 0.2) -> None:
    """semantic/<key>.png: the ground truth with a fraction of pixels changed to random classes."""
    rng = np.random.default_rng(seed)
    for key, gt in gt_maps.items():
        pred = np.where(gt == 255, 0, gt).astype(np.uint8)
        noise = rng.random(gt.shape) < flip
        pred[noise] = rng.integers(0, num_classes, int(noise.sum()))
        save_label(pred, out / "semantic" / f"{key}.png")
