"""Ground-truth readers: PASCAL VOC 2012, COCO instances JSON, and a generic masks folder.

Every reader gives:

- ``classes``: list of class names, index = ground-truth class id, 0 = background;
- ``records()``: one small picklable dict per image (``key``, ``image_path``, ``height``,
  ``width``, plus what ``load_semantic`` needs) — cheap, so Ray tasks can be handed shards of them;
- ``load_semantic(record)``: (H, W) uint8 class ids, 255 = ignore;
- ``instances_for(record)``: ground-truth instances of that image as COCO annotation dicts
  (category id = class id, RLE segmentation), or None when the source has no instances.

Image *keys* are the image's path relative to its image folder without the extension
(``2007_000033``, ``sub/img_001``): predictions ``semantic/<key>.png`` are matched by key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

from ..masks import mask_to_rle

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")


class GroundTruthError(ValueError):
    """A ground-truth dataset that cannot be read; the message names the file."""


def image_key(name: str) -> str:
    """``sub/img.jpg`` → ``sub/img`` (known image extensions only; other names unchanged)."""
    p = Path(name)
    return p.with_suffix("").as_posix() if p.suffix.lower() in IMAGE_SUFFIXES else p.as_posix()


def read_label_png(path: Path) -> np.ndarray:
    """A paletted or grayscale label PNG as (H, W) uint8 ids (palette indices, not colours)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            if img.mode not in ("P", "L", "I;16", "I"):
                raise GroundTruthError(f"{path}: label map must be paletted or grayscale, not mode {img.mode}")
            arr = np.asarray(img)
    except OSError as exc:
        raise GroundTruthError(f"{path}: cannot read label map ({exc})") from exc
    if arr.dtype != np.uint8:
        if arr.max(initial=0) > 255:
            raise GroundTruthError(f"{path}: label ids above 255")
        arr = arr.astype(np.uint8)
    return arr


def _instances_from_maps(semantic: np.ndarray, objects: np.ndarray) -> list[dict]:
    """Instances from a VOC-style object map (0 = none, 255 = boundary) and its class map."""
    out = []
    for inst in np.unique(objects):
        if inst in (0, 255):
            continue
        mask = objects == inst
        classes = semantic[mask]
        classes = classes[(classes != 0) & (classes != 255)]
        if classes.size == 0:
            continue
        cls = int(np.bincount(classes).argmax())
        rle = mask_to_rle(mask)
        ys, xs = np.nonzero(mask)
        out.append({"category_id": cls, "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
                    "area": int(mask.sum()), "iscrowd": 0,
                    "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]})
    return out


class GroundTruth:
    """Base of the readers; see the module docstring."""

    kind: str = ""
    classes: list[str]

    def records(self) -> list[dict]:
        raise NotImplementedError

    @staticmethod
    def load_semantic(record: dict) -> np.ndarray:
        raise NotImplementedError

    @staticmethod
    def instances_for(record: dict) -> Optional[list[dict]]:
        return None

    @property
    def has_instances(self) -> bool:
        return False


class VocGroundTruth(GroundTruth):
    """PASCAL VOC 2012 layout: ``JPEGImages/``, ``SegmentationClass/`` (paletted, 255 = boundary),
    optional ``SegmentationObject/`` (instances), ``ImageSets/Segmentation/<split>.txt``.

    Args:
        root (Path): the ``VOC2012`` folder (or a ``VOCdevkit`` holding one).
        split (str): image set name (``val``).
    """

    kind = "voc"

    def __init__(self, root: Path, split: str = "val") -> None:
        root = Path(root)
        if (root / "VOC2012").is_dir():
            root = root / "VOC2012"
        self.root = root
        self.split = split
        self.classes = list(VOC_CLASSES)
        self.list_file = root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not self.list_file.is_file():
            raise GroundTruthError(f"VOC: {self.list_file} does not exist (is {root} a VOC2012 folder?)")

    def records(self) -> list[dict]:
        from PIL import Image

        out = []
        for name in (line.strip() for line in self.list_file.read_text().splitlines()):
            if not name:
                continue
            seg = self.root / "SegmentationClass" / f"{name}.png"
            if not seg.is_file():
                raise GroundTruthError(f"VOC: {seg} is listed in {self.list_file} but missing")
            with Image.open(seg) as img:
                w, h = img.size
            obj = self.root / "SegmentationObject" / f"{name}.png"
            out.append({"key": name, "image_path": str(self.root / "JPEGImages" / f"{name}.jpg"), "height": h,
                        "width": w, "semantic_path": str(seg), "object_path": str(obj) if obj.is_file() else ""})
        return out

    @staticmethod
    def load_semantic(record: dict) -> np.ndarray:
        return read_label_png(Path(record["semantic_path"]))

    @staticmethod
    def instances_for(record: dict) -> Optional[list[dict]]:
        if not record.get("object_path"):
            return None
        return _instances_from_maps(read_label_png(Path(record["semantic_path"])),
                                    read_label_png(Path(record["object_path"])))

    @property
    def has_instances(self) -> bool:
        return (self.root / "SegmentationObject").is_dir()


class CocoGroundTruth(GroundTruth):
    """COCO instances JSON (+ image folder). Semantic maps are rendered for the categories:

    class id k ≥ 1 is the k-th category in ascending category-id order (COCO-80: the 80 things).
    Rendering is deterministic: ``iscrowd`` regions are painted 255 (ignore) first; then non-crowd
    instances in order of decreasing area (ties: ascending annotation id), so where instances
    overlap the smaller one wins; pixels of no instance are background 0.

    Args:
        annotations (Path): ``instances_val2017.json`` or similar.
        images (Path | None): image folder (default: beside the JSON, ``../val2017`` style not guessed;
            only used for ``image_path``).
    """

    kind = "coco"

    def __init__(self, annotations: Path, images: Optional[Path] = None) -> None:
        self.path = Path(annotations)
        if not self.path.is_file():
            raise GroundTruthError(f"COCO: annotations file {self.path} does not exist")
        try:
            self.data = json.loads(self.path.read_text())
        except json.JSONDecodeError as exc:
            raise GroundTruthError(f"COCO: {self.path} is not valid JSON ({exc})") from exc
        for key in ("images", "annotations", "categories"):
            if key not in self.data:
                raise GroundTruthError(f"COCO: {self.path} has no {key!r} list")
        self.images_dir = Path(images) if images else self.path.parent
        cats = sorted(self.data["categories"], key=lambda c: c["id"])
        self.cat_to_class = {c["id"]: i + 1 for i, c in enumerate(cats)}
        self.classes = ["background"] + [c["name"] for c in cats]

    def records(self) -> list[dict]:
        by_image: dict[int, list[dict]] = {}
        for ann in self.data["annotations"]:
            by_image.setdefault(ann["image_id"], []).append(ann)
        out = []
        seen: dict[str, int] = {}
        for img in sorted(self.data["images"], key=lambda i: i["id"]):
            key = image_key(img["file_name"])
            if key in seen:
                raise GroundTruthError(f"COCO: {self.path} lists file {img['file_name']} twice (ids {seen[key]}, {img['id']})")
            seen[key] = img["id"]
            anns = [{"id": a.get("id", 0), "class": self.cat_to_class[a["category_id"]], "iscrowd": a.get("iscrowd", 0),
                     "area": a.get("area", 0), "segmentation": a["segmentation"]}
                    for a in by_image.get(img["id"], []) if a["category_id"] in self.cat_to_class]
            out.append({"key": key, "image_path": str(self.images_dir / img["file_name"]), "height": img["height"],
                        "width": img["width"], "coco_id": img["id"], "annotations": json.dumps(anns)})
        return out

    @staticmethod
    def load_semantic(record: dict) -> np.ndarray:
        from pycocotools import mask as mask_utils

        h, w = int(record["height"]), int(record["width"])
        out = np.zeros((h, w), dtype=np.uint8)
        anns = json.loads(record["annotations"])

        def decode(seg) -> np.ndarray:
            if isinstance(seg, list):
                rles = mask_utils.frPyObjects(seg, h, w)
                rle = mask_utils.merge(rles)
            elif isinstance(seg.get("counts"), list):
                rle = mask_utils.frPyObjects(seg, h, w)
            else:
                rle = {"size": seg["size"], "counts": seg["counts"].encode() if isinstance(seg["counts"], str) else seg["counts"]}
            return mask_utils.decode(rle).astype(bool)

        for a in anns:
            if a["iscrowd"]:
                out[decode(a["segmentation"])] = 255
        for a in sorted((a for a in anns if not a["iscrowd"]), key=lambda a: (-a["area"], a["id"])):
            out[decode(a["segmentation"])] = a["class"]
        return out

    def coco_dict(self) -> dict:
        """The instance ground truth with category ids renumbered to class ids (1..C-1)."""
        anns = [{**a, "category_id": self.cat_to_class[a["category_id"]]}
                for a in self.data["annotations"] if a["category_id"] in self.cat_to_class]
        for i, a in enumerate(anns):
            a.setdefault("id", i + 1)
            a.setdefault("iscrowd", 0)
        cats = [{"id": i, "name": n} for i, n in enumerate(self.classes) if i > 0]
        return {"images": self.data["images"], "annotations": anns, "categories": cats}

    @property
    def has_instances(self) -> bool:
        return True


class FolderGroundTruth(GroundTruth):
    """Generic folder: ``ROOT/classes.txt`` (one name per line, line 1 = class 0 = background),
    ``ROOT/masks/<key>.png`` (paletted or grayscale ids, 255 = ignore), ``ROOT/images/<key>.*``
    (optional), and optionally ``ROOT/instances.json`` (COCO, ``file_name`` relative to images/,
    category ids = class ids)."""

    kind = "folder"

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        classes_file = self.root / "classes.txt"
        if not classes_file.is_file():
            raise GroundTruthError(f"folder ground truth: {classes_file} does not exist")
        self.classes = [c.strip() for c in classes_file.read_text().splitlines() if c.strip()]
        if len(self.classes) < 2:
            raise GroundTruthError(f"{classes_file} must list background and at least one class")
        if not (self.root / "masks").is_dir():
            raise GroundTruthError(f"folder ground truth: {self.root / 'masks'} does not exist")
        self.instances_path = self.root / "instances.json"

    def records(self) -> list[dict]:
        from PIL import Image

        images = {}
        if (self.root / "images").is_dir():
            for p in (self.root / "images").rglob("*"):
                if p.is_file():
                    images[image_key(p.relative_to(self.root / "images").as_posix())] = str(p)
        out = []
        for m in sorted((self.root / "masks").rglob("*.png")):
            key = m.relative_to(self.root / "masks").with_suffix("").as_posix()
            with Image.open(m) as img:
                w, h = img.size
            out.append({"key": key, "image_path": images.get(key, ""), "height": h, "width": w,
                        "semantic_path": str(m)})
        if not out:
            raise GroundTruthError(f"folder ground truth: no PNG masks under {self.root / 'masks'}")
        return out

    @staticmethod
    def load_semantic(record: dict) -> np.ndarray:
        return read_label_png(Path(record["semantic_path"]))

    def coco_dict(self) -> Optional[dict]:
        if not self.instances_path.is_file():
            return None
        data = json.loads(self.instances_path.read_text())
        return {"images": data["images"], "annotations": data["annotations"],
                "categories": [{"id": i, "name": n} for i, n in enumerate(self.classes) if i > 0]}

    @property
    def has_instances(self) -> bool:
        return self.instances_path.is_file()


def parse_gt(spec: str) -> GroundTruth:
    """``voc:ROOT[@split]``, ``coco:ANNOTATIONS.json[:IMAGES_DIR]`` or ``folder:ROOT``.

    Raises:
        GroundTruthError: unknown kind or unreadable dataset.
    """
    kind, _, rest = spec.partition(":")
    if not rest:
        raise GroundTruthError(f"ground truth {spec!r} must be voc:ROOT, coco:ANNOTATIONS.json[:IMAGES] or folder:ROOT")
    if kind == "voc":
        root, _, split = rest.partition("@")
        return VocGroundTruth(Path(root), split or "val")
    if kind == "coco":
        if ".json:" in rest:
            ann, images = rest.split(".json:", 1)
            return CocoGroundTruth(Path(ann + ".json"), Path(images))
        return CocoGroundTruth(Path(rest))
    if kind == "folder":
        return FolderGroundTruth(Path(rest))
    raise GroundTruthError(f"unknown ground truth kind {kind!r} in {spec!r} (voc, coco or folder)")
