"""Exchange types: Ontology (prompt → class name), ImageRecord, MaskSet."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np


@dataclass(frozen=True)
class Ontology:
    """The classes a user asks for, and the text prompt used for each.

    Attributes:
        prompts (tuple[str, ...]): text given to text encoders, one per class.
        classes (tuple[str, ...]): class names written to outputs, same length as ``prompts``.
    """

    prompts: tuple[str, ...]
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.prompts) != len(self.classes):
            raise ValueError(f"Ontology: {len(self.prompts)} prompts but {len(self.classes)} classes")
        if not self.classes:
            raise ValueError("Ontology: no classes given")
        for name in self.classes:
            if not name or name != name.strip():
                raise ValueError(f"Ontology: class name {name!r} is empty or has surrounding whitespace")
        seen: set[str] = set()
        for name in self.classes:
            if name in seen:
                raise ValueError(f"Ontology: class {name!r} is given twice")
            seen.add(name)

    @classmethod
    def from_names(cls, text: str | Sequence[str]) -> "Ontology":
        """Build from ``"person, bicycle, dog"`` or a list; each name is its own prompt.

        Raises:
            ValueError: an empty name (``"a,,b"``), a duplicate, or no names at all.
        """
        names = text.split(",") if isinstance(text, str) else list(text)
        stripped = [n.strip() for n in names]
        if any(not n for n in stripped):
            raise ValueError(f"class list {text!r} has an empty name")
        return cls(prompts=tuple(stripped), classes=tuple(stripped))

    def index(self, name: str) -> int:
        """Class id (0-based) of ``name``; raises KeyError naming the known classes."""
        try:
            return self.classes.index(name)
        except ValueError:
            raise KeyError(f"class {name!r} is not in the ontology {list(self.classes)}") from None


@dataclass
class ImageRecord:
    """One decoded image and where it came from.

    Attributes:
        image_id (str): stable id, unique in its source (relative path, or Parquet id).
        path (str): file the image came from (for Parquet: ``file#row``).
        image (np.ndarray): (H, W, 3) uint8 RGB.
        labels (list[str]): image-level labels if the source has them, else empty.
    """

    image_id: str
    path: str
    image: np.ndarray
    labels: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.image.ndim != 3 or self.image.shape[2] != 3 or self.image.dtype != np.uint8:
            raise ValueError(
                f"ImageRecord {self.image_id}: image must be (H, W, 3) uint8, got {self.image.shape} {self.image.dtype}"
            )


@dataclass
class MaskSet:
    """The masks of one image and their per-mask values.

    Attributes:
        masks (np.ndarray | list[dict]): (N, H, W) bool, or N COCO RLE dicts (``size``, ``counts``).
        boxes (np.ndarray): (N, 4) float32 xyxy in pixels.
        scores (np.ndarray): (N,) float32.
        class_ids (np.ndarray): (N,) int64; -1 where no class is assigned.
        data (dict[str, np.ndarray]): extra per-mask columns, each with N rows
            (e.g. ``tokens`` (N, T) float, ``iou_pred`` (N,), ``stability`` (N,), ``points`` (N, 2)).
    """

    masks: Any
    boxes: np.ndarray
    scores: np.ndarray
    class_ids: Optional[np.ndarray] = None
    data: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.masks)
        if isinstance(self.masks, np.ndarray) and (self.masks.ndim != 3 or self.masks.dtype != bool):
            raise ValueError(f"MaskSet.masks must be (N, H, W) bool, got {self.masks.shape} {self.masks.dtype}")
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4) if n == 0 else np.asarray(self.boxes, np.float32)
        self.scores = np.asarray(self.scores, dtype=np.float32)
        if self.class_ids is None:
            self.class_ids = np.full(n, -1, dtype=np.int64)
        self.class_ids = np.asarray(self.class_ids, dtype=np.int64)
        if self.boxes.shape != (n, 4):
            raise ValueError(f"MaskSet.boxes must be ({n}, 4), got {self.boxes.shape}")
        for name, arr in (("scores", self.scores), ("class_ids", self.class_ids)):
            if arr.shape != (n,):
                raise ValueError(f"MaskSet.{name} must be ({n},), got {arr.shape}")
        for name, arr in self.data.items():
            if len(arr) != n:
                raise ValueError(f"MaskSet.data[{name!r}] has {len(arr)} rows, expected {n}")

    def __len__(self) -> int:
        return len(self.masks)
