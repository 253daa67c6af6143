"""Coarse semantic labels to refine: a labels directory of ours or a user's folder of label PNGs.

Accepted layouts (``usam-ray refine --labels DIR``):

- ours: ``DIR/semantic/<key>.png`` with ``DIR/classes.json`` (``{"classes": ["background", …]}``);
- a user's: ``DIR/<key>.png`` or ``DIR/masks/<key>.png``, with ``DIR/classes.txt`` (one name per
  line, line 1 = class 0 = background) or ``classes.json``, or a classes file given apart.

PNGs are paletted or grayscale class ids (palette indices, not colours), 0 = background, 255 =
ignore; ``<key>`` is the image id without its image extension (``sub/img.jpg`` → ``sub/img``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

from .groundtruth import image_key, read_label_png


class CoarseLabelsError(ValueError):
    """A coarse labels folder that cannot be used; the message names the file and the problem."""


def read_classes_file(path: Path) -> list[str]:
    """Class names, background first, from ``classes.json`` (``{"classes": [...]}`` or a list) or a
    text file (one name per line).

    Raises:
        CoarseLabelsError: unreadable, or fewer than two names.
    """
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise CoarseLabelsError(f"classes file {path}: cannot read ({exc})") from exc
    if Path(path).suffix == ".json":
        data = json.loads(text)
        names = data.get("classes") if isinstance(data, dict) else data
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if not isinstance(names, list) or len(names) < 2:
        raise CoarseLabelsError(f"classes file {path} must list background and at least one class")
    return [str(n) for n in names]


class CoarseLabels:
    """Read-side view of a coarse labels folder.

    Args:
        root (Path): the folder.
        classes_file (Path | None): the class names when the folder holds no classes file.

    Attributes:
        png_dir (Path): where the ``<key>.png`` files are.
        classes (list[str]): names by class id, background first.
        ours (bool): a usam-ray labels directory (``semantic/`` + ``classes.json``).

    Raises:
        CoarseLabelsError: the folder is missing, holds no PNG, or has no classes.
    """

    def __init__(self, root: Path, classes_file: Optional[Path] = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise CoarseLabelsError(f"coarse labels {self.root} is not a folder")
        self.ours = (self.root / "semantic").is_dir()
        if self.ours:
            self.png_dir = self.root / "semantic"
        elif (self.root / "masks").is_dir():
            self.png_dir = self.root / "masks"
        else:
            self.png_dir = self.root
        found = [p for p in (classes_file, self.root / "classes.json", self.root / "classes.txt") if p is not None]
        path = next((p for p in found if Path(p).is_file()), None)
        if path is None:
            raise CoarseLabelsError(f"coarse labels {self.root}: no classes.json or classes.txt (give --classes-file: "
                                    "one name per line, background first)")
        self.classes = read_classes_file(Path(path))
        if not any(self.png_dir.rglob("*.png")):
            raise CoarseLabelsError(f"coarse labels {self.root}: no PNG under {self.png_dir}")

    def path(self, image_id: str) -> Path:
        """The PNG of image ``image_id``."""
        return self.png_dir / f"{image_key(image_id)}.png"

    def read(self, image_id: str, shape: tuple[int, int]) -> np.ndarray:
        """The coarse map of ``image_id`` at ``shape`` (H, W): (H, W) uint8 ids, nearest-resized
        when the PNG has another size (a coarse map may be smaller than its image).

        Raises:
            CoarseLabelsError: no PNG for the image, or ids beyond the classes (named).
        """
        import cv2

        path = self.path(image_id)
        if not path.is_file():
            raise CoarseLabelsError(f"{path}: no coarse label for image {image_id}")
        ids = read_label_png(path)
        bad = [int(v) for v in np.unique(ids) if v >= len(self.classes) and v != 255]
        if bad:
            raise CoarseLabelsError(f"{path}: class ids {bad} beyond the {len(self.classes)} classes "
                                    f"{self.classes}")
        if ids.shape != tuple(shape):
            ids = cv2.resize(ids, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
        return ids.astype(np.uint8)
