"""Procedural toy scenes with exact ground truth.

Five shape classes (circle, square, triangle, star, ring) in varied sizes, rotations, colours
and textures, on noisy gradient backgrounds with clutter (class-less blobs and strokes), with
occlusion and several instances of a class per scene. Two products:

- ``single_object(rng, size)``: one object, large and roughly centred, with its image-level
  label: the toy stand-in for Stable Diffusion's "a photo of a {c}" images;
- ``scene(rng, size)``: several objects; semantic map (0 = background, class k ≥ 1) and
  instance masks (visible parts after occlusion) that agree by construction.

Everything is a pure function of the ``numpy.random.Generator`` passed in: same seed, same scene.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star", "ring")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220), "yellow": (230, 210, 40),
    "purple": (150, 60, 200), "orange": (240, 140, 30), "white": (235, 235, 235), "black": (25, 25, 25),
}
SUPERSAMPLE = 4


@dataclass
class ToyObject:
    """One placed object: ``cls`` (1-based class id), ``colour`` (name), ``mask`` (H, W) bool of its
    full shape before occlusion."""

    cls: int
    colour: str
    mask: np.ndarray


@dataclass
class Scene:
    """A generated image and its ground truth.

    Attributes:
        image (np.ndarray): (H, W, 3) uint8 RGB.
        semantic (np.ndarray): (H, W) uint8, 0 background, k = CLASSES[k-1].
        instances (np.ndarray): (N, H, W) bool visible masks, non-overlapping.
        classes (np.ndarray): (N,) int64 class ids (1-based).
        colours (list[str]): colour name of each instance.
    """

    image: np.ndarray
    semantic: np.ndarray
    instances: np.ndarray
    classes: np.ndarray
    colours: list[str]


def _shape_mask(cls: int, size: int, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    """Anti-aliased-then-thresholded mask of one shape (drawn at 4× and downsampled)."""
    from PIL import Image, ImageDraw

    s = SUPERSAMPLE
    canvas = Image.new("L", (size * s, size * s), 0)
    draw = ImageDraw.Draw(canvas)
    cx, cy, r = cx * s, cy * s, r * s
    name = CLASSES[cls - 1]

    def poly(n: int, radius: float, start: float) -> list[tuple[float, float]]:
        return [(cx + radius * np.cos(start + 2 * np.pi * k / n), cy + radius * np.sin(start + 2 * np.pi * k / n))
                for k in range(n)]

    if name == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif name == "square":
        draw.polygon(poly(4, r * 1.1, angle + np.pi / 4), fill=255)
    elif name == "triangle":
        draw.polygon(poly(3, r * 1.15, angle - np.pi / 2), fill=255)
    elif name == "star":
        pts = []
        for k in range(10):
            rad = r * 1.15 if k % 2 == 0 else r * 0.48
            a = angle - np.pi / 2 + np.pi * k / 5
            pts.append((cx + rad * np.cos(a), cy + rad * np.sin(a)))
        draw.polygon(pts, fill=255)
    elif name == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        inner = r * 0.55
        draw.ellipse([cx - inner, cy - inner, cx + inner, cy + inner], fill=0)
    small = np.asarray(canvas, dtype=np.float32).reshape(size, s, size, s).mean(axis=(1, 3))
    return small >= 128


def _background(rng: np.random.Generator, size: int, clutter: int) -> np.ndarray:
    from PIL import Image, ImageDraw

    yy, xx = np.mgrid[0:size, 0:size] / size
    base = rng.uniform(60, 200, 3)
    gx, gy = rng.uniform(-70, 70, 3), rng.uniform(-70, 70, 3)
    img = base + gx * xx[..., None] + gy * yy[..., None]
    img += rng.normal(0, rng.uniform(4, 16), (size, size, 3))
    canvas = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(clutter):  # class-less clutter: thin strokes and small irregular blobs
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            x0, y0, x1, y1 = (float(v) for v in rng.uniform(0, size, 4))
            draw.line([x0, y0, x1, y1], fill=colour, width=int(rng.integers(1, 3)))
        else:
            cx, cy = rng.uniform(0, size, 2)
            pts = [(cx + rng.uniform(-5, 5), cy + rng.uniform(-5, 5)) for _ in range(5)]
            draw.polygon(pts, fill=colour)
    return np.asarray(canvas).astype(np.float32)


def _paint(rng: np.random.Generator, img: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int]) -> None:
    """Fill ``mask`` with ``colour`` and a random texture (flat, stripes, checker or noise)."""
    size = img.shape[0]
    yy, xx = np.mgrid[0:size, 0:size]
    kind = int(rng.integers(0, 4))
    c = np.asarray(colour, dtype=np.float32)
    if kind == 0:
        tex = np.zeros((size, size, 1), np.float32)
    elif kind == 1:
        period = rng.uniform(3, 7)
        a = rng.uniform(0, np.pi)
        tex = (np.sin((xx * np.cos(a) + yy * np.sin(a)) * 2 * np.pi / period) * 22)[..., None]
    elif kind == 2:
        cell = int(rng.integers(2, 5))
        tex = ((((xx // cell) + (yy // cell)) % 2) * 30 - 15).astype(np.float32)[..., None]
    else:
        tex = rng.normal(0, 14, (size, size, 1)).astype(np.float32)
    shade = rng.uniform(0.85, 1.1)
    img[mask] = np.clip(c * shade + tex[mask], 0, 255)


def _place(rng: np.random.Generator, size: int, cls: int, r_range: tuple[float, float],
           centre: Optional[tuple[float, float]] = None) -> np.ndarray:
    r = rng.uniform(*r_range) * size
    if centre is None:
        cx, cy = rng.uniform(r * 0.6, size - r * 0.6, 2)
    else:
        cx, cy = centre
    return _shape_mask(cls, size, float(cx), float(cy), float(r), float(rng.uniform(0, 2 * np.pi)))


def _colour(rng: np.random.Generator) -> str:
    return list(COLOURS)[int(rng.integers(0, len(COLOURS)))]


def single_object(rng: np.random.Generator, size: int = 128, cls: Optional[int] = None,
                  scale: tuple[float, float] = (0.22, 0.36)) -> Scene:
    """One roughly centred object of class ``cls`` (random if None) on a cluttered background;
    its radius is drawn from ``scale`` × size (the default gives large objects; the multi-object
    scenes use 0.08–0.2)."""
    cls = int(rng.integers(1, len(CLASSES) + 1)) if cls is None else cls
    img = _background(rng, size, clutter=int(rng.integers(0, 4)))
    centre = tuple(size / 2 + rng.uniform(-0.1, 0.1, 2) * size)
    mask = _place(rng, size, cls, scale, centre)  # type: ignore[arg-type]
    colour = _colour(rng)
    _paint(rng, img, mask, COLOURS[colour])
    semantic = np.where(mask, cls, 0).astype(np.uint8)
    return Scene(img.astype(np.uint8), semantic, mask[None], np.array([cls]), [colour])


def scene(rng: np.random.Generator, size: int = 128, n_objects: tuple[int, int] = (2, 6),
          min_visible: int = 30) -> Scene:
    """Several objects (some of one class, overlapping) with visible-part instance masks.

    Objects are painted back to front; an instance whose visible area drops below
    ``min_visible`` pixels is removed from the ground truth *and* from the image (repainted
    background would be complex, so it is simply not drawn: the scene is regenerated without it).
    """
    img = _background(rng, size, clutter=int(rng.integers(2, 9)))
    n = int(rng.integers(n_objects[0], n_objects[1] + 1))
    objects: list[ToyObject] = []
    repeat = int(rng.integers(1, len(CLASSES) + 1))
    for k in range(n):
        cls = repeat if k < 2 else int(rng.integers(1, len(CLASSES) + 1))  # ≥ 2 instances of one class
        objects.append(ToyObject(cls, _colour(rng), _place(rng, size, cls, (0.08, 0.2))))
    visible = [o.mask.copy() for o in objects]
    for i in range(len(objects)):
        for j in range(i + 1, len(objects)):
            visible[i] &= ~objects[j].mask
    keep = [i for i in range(len(objects)) if visible[i].sum() >= min_visible]
    for i in keep:  # paint back to front, kept objects only
        _paint(rng, img, objects[i].mask, COLOURS[objects[i].colour])
    final = []
    for pos, i in enumerate(keep):  # recompute visibility among the kept objects only
        m = objects[i].mask.copy()
        for j in keep[pos + 1:]:
            m &= ~objects[j].mask
        final.append(m)
    semantic = np.zeros((size, size), np.uint8)
    for i, m in zip(keep, final):
        semantic[m] = objects[i].cls
    instances = np.stack(final) if final else np.zeros((0, size, size), bool)
    return Scene(img.astype(np.uint8), semantic, instances, np.array([objects[i].cls for i in keep], np.int64),
                 [objects[i].colour for i in keep])


def write_scene_dataset(root: Path, n: int, seed: int, size: int = 128) -> Path:
    """Write ``n`` multi-object scenes as a ground-truth folder the evaluator reads
    (``folder:ROOT``): ``images/<key>.png``, ``masks/<key>.png`` (paletted semantic ids),
    ``classes.txt`` and ``instances.json`` (COCO, RLE, category id = class id)."""
    from PIL import Image

    from ..masks import mask_to_rle, masks_to_boxes, palette
    from .overlay import label_png

    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images, anns = [], []
    pal = palette()
    for i in range(n):
        sc = scene(rng, size)
        key = f"scene_{i:05d}"
        Image.fromarray(sc.image).save(root / "images" / f"{key}.png")
        (root / "masks" / f"{key}.png").write_bytes(label_png(sc.semantic, pal))
        images.append({"id": i + 1, "file_name": f"{key}.png", "height": size, "width": size})
        boxes = masks_to_boxes(sc.instances)
        for m, c, b in zip(sc.instances, sc.classes, boxes):
            rle = mask_to_rle(m)
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(c), "iscrowd": 0,
                         "area": int(m.sum()), "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
                         "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}})
    (root / "classes.txt").write_text("\n".join(("background",) + CLASSES) + "\n")
    (root / "instances.json").write_text(json.dumps({
        "images": images, "annotations": anns,
        "categories": [{"id": k + 1, "name": c} for k, c in enumerate(CLASSES)]}))
    return root


def write_single_objects(root: Path, per_class: int, seed: int, size: int = 128) -> Path:
    """Write ``per_class`` single-object images per class as ``root/<class>/<i>.png`` (a
    ``classes:ROOT`` source): the toy synthetic training images of U-SAM."""
    from PIL import Image

    root = Path(root)
    for k, name in enumerate(CLASSES, start=1):
        (root / name).mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng([seed, k])
        for i in range(per_class):
            Image.fromarray(single_object(rng, size, cls=k).image).save(root / name / f"{name}_{i:04d}.png")
    return root


def coarsen_labels(semantic: np.ndarray, rng: np.random.Generator, factor: int = 8, sigma: float = 2.0,
                   k: int = 2) -> np.ndarray:
    """A coarse version of a label map, as a weak segmenter would give it: downsampled ×``factor``
    (nearest) and upsampled back (blocks), blurred (per-class Gaussian of std ``sigma`` px, then
    the most likely class), then each class eroded or dilated (coin flip from ``rng``) by ``k`` px.

    Args:
        semantic (np.ndarray): (H, W) uint8 class ids (255 = ignore becomes background).

    Returns:
        (H, W) uint8.
    """
    import cv2

    sem = np.where(semantic == 255, 0, semantic).astype(np.uint8)
    h, w = sem.shape
    up = np.kron(sem[::factor, ::factor], np.ones((factor, factor), np.uint8))[:h, :w]
    classes = np.unique(up)
    blurred = np.stack([cv2.GaussianBlur((up == c).astype(np.float32), (0, 0), sigma) for c in classes])
    out = classes[blurred.argmax(0)].astype(np.uint8)
    kernel = np.ones((2 * k + 1, 2 * k + 1), np.uint8)
    for c in classes[classes > 0]:
        m = (out == c).astype(np.uint8)
        if rng.random() < 0.5:
            out[(m == 1) & (cv2.erode(m, kernel) == 0)] = 0
        else:
            out[(cv2.dilate(m, kernel) == 1) & (out == 0)] = c
    return out


def write_coarse_labels(gt_root: Path, out: Path, seed: int, **coarsen: float) -> Path:
    """Coarsened ground truth of a scene dataset (``write_scene_dataset``) as a user-style folder of
    label PNGs: ``OUT/<key>.png`` (paletted) and ``OUT/classes.txt``; one ``rng`` of ``seed`` over
    the masks in name order (``coarsen_labels`` arguments in ``coarsen``)."""
    from ..masks import palette
    from .groundtruth import read_label_png
    from .overlay import label_png

    gt_root, out = Path(gt_root), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pal = palette()
    for mask in sorted((gt_root / "masks").glob("*.png")):
        (out / mask.name).write_bytes(label_png(coarsen_labels(read_label_png(mask), rng, **coarsen), pal))
    (out / "classes.txt").write_text((gt_root / "classes.txt").read_text())
    return out
