"""A labels directory, as the evaluator reads it.

Layout (``RUN/labels``):

- ``semantic/<key>.png``: paletted (or grayscale) class-id maps, 0 = background, 255 = ignore (a
  folder of such PNGs without ``semantic/`` — at its root or in ``masks/`` — is read the same way);
- ``classes.json`` (optional): ``{"classes": ["background", "dog", ...], "fingerprint": "..."}``, or
  ``classes.txt`` (one name per line, background first);
  without it the prediction ids are taken to be the ground truth's ids;
- ``coco_results.json`` (optional): COCO results list; each entry has ``image_id`` (an image id of
  ``coco_dataset.json`` beside it, else our string key or the ground truth's COCO id),
  ``category_name`` (or ``category_id`` in the labels' class ids), ``score`` and ``segmentation`` (RLE);
- ``coco_dataset.json`` (optional): the COCO dataset whose image ids ``coco_results.json`` uses;
- ``instances/part-*.parquet`` (optional): instance shards (``data/schema.py`` INSTANCES_SCHEMA).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..data.shards import list_shards


class LabelsError(ValueError):
    """A labels directory that does not fit the ground truth; the message names what."""


def _norm(name: str) -> str:
    return "".join(name.lower().split())


class LabelsDir:
    """Read-side view of a labels directory.

    Args:
        root (Path): the labels directory.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise LabelsError(f"labels directory {self.root} does not exist")
        # ours (semantic/), else a folder of label PNGs (masks/ or the folder itself: `usam-ray refine`'s inputs)
        self.semantic_dir = next((d for d in (self.root / "semantic", self.root / "masks") if d.is_dir()), self.root)
        meta_path = self.root / "classes.json"
        self.meta: dict[str, Any] = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        self.classes: Optional[list[str]] = self.meta.get("classes")
        if self.classes is None and (self.root / "classes.txt").is_file():
            from ..data.coarse import read_classes_file

            self.classes = read_classes_file(self.root / "classes.txt")
        self.results_path = self.root / "coco_results.json"
        self.instances_dir = self.root / "instances"

    def semantic_path(self, key: str) -> Path:
        return self.semantic_dir / f"{key}.png"

    def semantic_keys(self) -> set[str]:
        """Keys of every semantic map present."""
        if not self.semantic_dir.is_dir():
            return set()
        return {p.relative_to(self.semantic_dir).with_suffix("").as_posix() for p in self.semantic_dir.rglob("*.png")}

    def class_map(self, gt_classes: list[str]) -> Optional[np.ndarray]:
        """Lookup table labels class id → ground-truth class id (None: ids are the ground truth's).

        Names match ignoring case and spaces (``potted plant`` = ``pottedplant``).

        Raises:
            LabelsError: a predicted class that the ground truth does not have (named).
        """
        if self.classes is None:
            return None
        index = {_norm(n): i for i, n in enumerate(gt_classes)}
        lut = np.zeros(len(self.classes), dtype=np.int64)
        unknown = [n for n in self.classes if _norm(n) not in index]
        if unknown:
            raise LabelsError(
                f"{self.root / 'classes.json'}: predicted classes {unknown} are not in the ground truth's "
                f"classes {gt_classes}"
            )
        for i, n in enumerate(self.classes):
            lut[i] = index[_norm(n)]
        return lut

    def fingerprints(self) -> dict[str, Any]:
        """Fingerprints of the labels evaluated: classes.json's, and RUN/run.json stages' if beside."""
        out: dict[str, Any] = {}
        if "fingerprint" in self.meta:
            out["labels"] = self.meta["fingerprint"]
        run_json = self.root.parent / "run.json"
        if run_json.is_file():
            stages = json.loads(run_json.read_text()).get("stages", {})
            out.update({f"run.{k}": v.get("fingerprint") for k, v in stages.items() if v.get("fingerprint")})
        return out

    @property
    def has_instances(self) -> bool:
        return self.results_path.is_file() or bool(list_shards(self.instances_dir))

    def instance_shards(self) -> list[Path]:
        return list_shards(self.instances_dir)


def results_from_json(path: Path) -> list[dict]:
    """The COCO results list of ``coco_results.json`` (a list, or a dict with ``annotations``).

    When a ``coco_dataset.json`` written by usam-ray lies beside it, the integer image ids are
    that file's and are turned back into image keys.
    """
    from ..data.coco import key_by_image_id

    path = Path(path)
    data = json.loads(path.read_text())
    if isinstance(data, dict):
        data = data.get("annotations", [])
    if not isinstance(data, list):
        raise LabelsError(f"{path}: expected a list of COCO results")
    dataset_path = path.parent / "coco_dataset.json"
    if dataset_path.is_file():
        keys = key_by_image_id(json.loads(dataset_path.read_text()))
        data = [{**r, "image_id": keys.get(r["image_id"], r["image_id"])} if isinstance(r.get("image_id"), int) else r
                for r in data]
    return data


def results_from_shard(path: Path) -> list[dict]:
    """Instance shard rows → COCO results (``image_id`` = key, ``category_name``, RLE)."""
    import pyarrow.parquet as pq

    rows = pq.read_table(path, columns=["image_id", "class_name", "score", "height", "width", "counts"]).to_pylist()
    return [{"image_id": r["image_id"], "category_name": r["class_name"], "score": float(r["score"]),
             "segmentation": {"size": [r["height"], r["width"]], "counts": r["counts"].decode("ascii")}} for r in rows]


def normalise_results(results: list[dict], key_to_id: dict[str, int], gt_classes: list[str],
                      labels_classes: Optional[list[str]], source: str) -> tuple[list[dict], int]:
    """Map results to the ground truth's image ids and class ids.

    Returns:
        (results with int ``image_id`` and ``category_id`` = ground-truth class id, number dropped
        because their image is not in the ground truth).

    Raises:
        LabelsError: a result whose class is not in the ground truth (named), or without a class.
    """
    index = {_norm(n): i for i, n in enumerate(gt_classes)}
    ids = set(key_to_id.values())
    out, dropped = [], 0
    for r in results:
        img = r["image_id"]
        if isinstance(img, str):
            img = key_to_id.get(img)
        if img is None or img not in ids:
            dropped += 1
            continue
        if "category_name" in r:
            name = r["category_name"]
        elif labels_classes is not None:
            name = labels_classes[int(r["category_id"])]
        else:
            name = gt_classes[int(r["category_id"])] if 0 < int(r["category_id"]) < len(gt_classes) else None
        if name is None or _norm(name) not in index or index[_norm(name)] == 0:
            raise LabelsError(f"{source}: result class {name!r} (category {r.get('category_id')}) is not a "
                              f"ground-truth class {gt_classes[1:]}")
        out.append({"image_id": int(img), "category_id": index[_norm(name)], "score": float(r["score"]),
                    "segmentation": r["segmentation"]})
    return out, dropped
