"""Arrow schemas of the Parquet shards, and converters between batches, tables and MaskSets.

Shard kinds:

- **embeddings** (``RUN/embed/part-*.parquet``), one row per image:
  ``image_id`` string, ``path`` string, ``labels`` list<string>, ``height``/``width`` int32,
  ``points`` list<fixed_size_list<float32, 2>> (prompt x, y in original pixels),
  ``tokens`` list<fixed_size_list<float16, T>> (mask-token embedding per prompt),
  ``iou`` and ``stability`` list<float32>, ``boxes`` list<fixed_size_list<float32, 4>> (xyxy,
  x2/y2 exclusive), ``mask_counts`` list<binary> (COCO RLE counts of masks of size (height, width)).
- **errors** (``RUN/<stage>/errors/part-*.parquet``): ``image_id``, ``path``, ``stage``,
  ``error_type``, ``message``, ``time`` (ISO 8601 UTC), all strings.
- **instances** (``RUN/labels/instances/part-*.parquet``), one row per labelled instance:
  ``image_id`` string (the image's key: its source path without extension), ``class_id`` int32
  (1-based: 0 is background), ``class_name`` string, ``score`` float32, ``height``/``width`` int32,
  ``counts`` binary (COCO RLE), ``box`` fixed_size_list<float32, 4> (**xyxy** in pixels, x2/y2
  exclusive: ``x2 - x1`` is the width; COCO's ``bbox`` in ``coco_dataset.json`` is **xywh**),
  ``provenance`` string (which method/stage produced it).
- **labelled images** (``RUN/labels/images/part-*.parquet``), one row per labelled image, written
  with the instance shard of the same name: ``image_id`` string (key), ``file_name`` string (the
  image's path relative to its source, as COCO's ``file_name``), ``height``/``width`` int32,
  ``instances`` int32.
- **pseudo** (``RUN/pseudo/part-*.parquet``), FMbSeg Stage 1, one row per image: ``image_id``,
  ``path`` strings, ``labels`` list<string> (the source's), ``height``/``width`` int32,
  ``detected`` list<string> (classes found present), and per pseudo mask: ``class_id``
  list<int32> (1-based), ``stage`` list<string> (``1.1`` or ``1.2``), ``score`` list<float32>
  (SAM's predicted IoU), ``boxes`` list<fixed_size_list<float32, 4>> (xyxy), ``mask_counts``
  list<binary> (COCO RLE of size (height, width)), ``provenance`` list<string>
  (``fmbseg_stage1_1`` / ``fmbseg_stage1_2``).
- **features** (``RUN/features/part-*.parquet``, same shard names as pseudo): ``image_id``,
  ``grid`` int32 (g: the patches form a g × g grid over the squashed image), ``features``
  list<fixed_size_list<float16, D>> (g² DINOv2 patch tokens, row-major).
- **images** (Parquet image sources): ``image_id`` string, ``image`` binary (encoded file bytes),
  ``labels`` list<string>.

Every shard's file metadata carries ``usam_ray.kind``, ``usam_ray.fingerprint`` and
``usam_ray.models`` (JSON: registry name → weights fingerprint).
"""

from __future__ import annotations

import json
from typing import Any, Iterable

import numpy as np
import pyarrow as pa

from ..types import MaskSet

SCHEMA_VERSION = "1"
META_KIND = b"usam_ray.kind"
META_FINGERPRINT = b"usam_ray.fingerprint"
META_MODELS = b"usam_ray.models"
META_VERSION = b"usam_ray.schema_version"


def embeddings_schema(token_dim: int) -> pa.Schema:
    """The embeddings shard schema for mask tokens of ``token_dim`` floats."""
    return pa.schema([
        ("image_id", pa.string()),
        ("path", pa.string()),
        ("labels", pa.list_(pa.string())),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("points", pa.list_(pa.list_(pa.float32(), 2))),
        ("tokens", pa.list_(pa.list_(pa.float16(), token_dim))),
        ("iou", pa.list_(pa.float32())),
        ("stability", pa.list_(pa.float32())),
        ("boxes", pa.list_(pa.list_(pa.float32(), 4))),
        ("mask_counts", pa.list_(pa.binary())),
    ])


ERRORS_SCHEMA = pa.schema([
    ("image_id", pa.string()),
    ("path", pa.string()),
    ("stage", pa.string()),
    ("error_type", pa.string()),
    ("message", pa.string()),
    ("time", pa.string()),
])

INSTANCES_SCHEMA = pa.schema([
    ("image_id", pa.string()),
    ("class_id", pa.int32()),
    ("class_name", pa.string()),
    ("score", pa.float32()),
    ("height", pa.int32()),
    ("width", pa.int32()),
    ("counts", pa.binary()),
    ("box", pa.list_(pa.float32(), 4)),
    ("provenance", pa.string()),
])

LABELLED_IMAGES_SCHEMA = pa.schema([
    ("image_id", pa.string()),
    ("file_name", pa.string()),
    ("height", pa.int32()),
    ("width", pa.int32()),
    ("instances", pa.int32()),
])

IMAGES_SCHEMA = pa.schema([
    ("image_id", pa.string()),
    ("image", pa.binary()),
    ("labels", pa.list_(pa.string())),
])


PSEUDO_SCHEMA = pa.schema([
    ("image_id", pa.string()),
    ("path", pa.string()),
    ("labels", pa.list_(pa.string())),
    ("height", pa.int32()),
    ("width", pa.int32()),
    ("detected", pa.list_(pa.string())),
    ("class_id", pa.list_(pa.int32())),
    ("stage", pa.list_(pa.string())),
    ("score", pa.list_(pa.float32())),
    ("boxes", pa.list_(pa.list_(pa.float32(), 4))),
    ("mask_counts", pa.list_(pa.binary())),
    ("provenance", pa.list_(pa.string())),
])


def features_schema(dim: int) -> pa.Schema:
    """The features shard schema for DINOv2 patch tokens of ``dim`` floats."""
    return pa.schema([("image_id", pa.string()), ("grid", pa.int32()),
                      ("features", pa.list_(pa.list_(pa.float16(), dim)))])


def features_table(image_ids: list[str], features: list[np.ndarray]) -> pa.Table:
    """Features shard table: per image a (g², D) array → its row (``grid`` = g)."""
    dim = features[0].shape[1] if features else 0
    grids = [int(round(len(f) ** 0.5)) for f in features]
    flat = np.concatenate([f.astype(np.float16).reshape(-1) for f in features]) if features else np.zeros(0, np.float16)
    offsets = np.cumsum([0, *[len(f) for f in features]]).astype(np.int32)
    inner = pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float16()), dim)
    column = pa.ListArray.from_arrays(pa.array(offsets), inner)
    return pa.Table.from_arrays([pa.array(image_ids, pa.string()), pa.array(grids, pa.int32()), column],
                                schema=features_schema(dim))


def features_arrays(table: pa.Table) -> list[np.ndarray]:
    """A features table → per image its (g², D) float32 array (read through Arrow, no Python lists)."""
    column = table.column("features").combine_chunks()
    dim = column.type.value_type.list_size
    flat = column.values.values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim)
    offsets = column.offsets.to_numpy()
    return [flat[offsets[i]:offsets[i + 1]] for i in range(len(table))]


def shard_metadata(kind: str, fingerprint: str, models: dict[str, str]) -> dict[bytes, bytes]:
    """File-level metadata for a shard."""
    return {
        META_KIND: kind.encode(),
        META_FINGERPRINT: fingerprint.encode(),
        META_MODELS: json.dumps(models, sort_keys=True).encode(),
        META_VERSION: SCHEMA_VERSION.encode(),
    }


def _nested(values: np.ndarray, inner: pa.DataType) -> pa.Array:
    """(B, P, K) → list<fixed_size_list<inner, K>> (B rows of P items); (B, P) → list<inner>."""
    b, p = values.shape[:2]
    offsets = pa.array(np.arange(b + 1, dtype=np.int32) * p)
    if values.ndim == 2:
        return pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1), type=inner))
    k = values.shape[2]
    flat = pa.array(values.reshape(-1), type=inner)
    return pa.ListArray.from_arrays(offsets, pa.FixedSizeListArray.from_arrays(flat, k))


def embeddings_table(batch: dict[str, np.ndarray], token_dim: int) -> pa.Table:
    """Build an embeddings table from a model-stage batch (ok rows only).

    Args:
        batch: ``image_id``/``path`` (B,) str, ``labels`` (B,) sequences of str, ``height``/``width``
            (B,) int, ``points`` (B, P, 2), ``tokens`` (B, P, T), ``iou``/``stability`` (B, P),
            ``boxes`` (B, P, 4), ``mask_counts`` (B,) object arrays of P bytes each.
        token_dim (int): T.
    """
    columns = {
        "image_id": pa.array([str(x) for x in batch["image_id"]], pa.string()),
        "path": pa.array([str(x) for x in batch["path"]], pa.string()),
        "labels": pa.array([_label_list(x) for x in batch["labels"]], pa.list_(pa.string())),
        "height": pa.array(np.asarray(batch["height"], np.int32)),
        "width": pa.array(np.asarray(batch["width"], np.int32)),
        "points": _nested(np.asarray(batch["points"], np.float32), pa.float32()),
        "tokens": _nested(np.asarray(batch["tokens"], np.float16), pa.float16()),
        "iou": _nested(np.asarray(batch["iou"], np.float32), pa.float32()),
        "stability": _nested(np.asarray(batch["stability"], np.float32), pa.float32()),
        "boxes": _nested(np.asarray(batch["boxes"], np.float32), pa.float32()),
        "mask_counts": pa.array([list(c) for c in batch["mask_counts"]], pa.list_(pa.binary())),
    }
    return pa.table(columns, schema=embeddings_schema(token_dim))


def _label_list(value: Any) -> list[str]:
    """One row's labels as a list of str (a sequence of names, or None for none)."""
    if value is None:
        return []
    if isinstance(value, (str, bytes)):
        raise TypeError(f"labels must be a list of class names per image, got the string {value!r}")
    return [str(v) for v in value]


def errors_table(rows: Iterable[dict[str, Any]]) -> pa.Table:
    """Build an errors table from dicts with the ERRORS_SCHEMA keys."""
    rows = list(rows)
    return pa.table({f.name: pa.array([str(r[f.name]) for r in rows], pa.string()) for f in ERRORS_SCHEMA},
                    schema=ERRORS_SCHEMA)


def list_values(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A ``list<T>`` or ``list<fixed_size_list<T, K>>`` column straight into numpy, through Arrow
    (no Python objects per element).

    Returns:
        values: (N,) or (N, K) numpy array of the items of all rows (T's numpy dtype);
        offsets: (rows + 1,) int64: row i's items are ``values[offsets[i]:offsets[i + 1]]``.
    """
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    offsets = np.asarray(arr.offsets.to_numpy(), np.int64)
    items = arr.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
    offsets = offsets - offsets[0]
    if pa.types.is_fixed_size_list(items.type):
        k = items.type.list_size
        flat = items.flatten().to_numpy(zero_copy_only=False)
        return flat.reshape(-1, k), offsets
    return items.to_numpy(zero_copy_only=False), offsets


def per_row(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """``list_values`` output → (rows, P, …) when every row has the same number P of items.

    Raises:
        ValueError: rows hold different numbers of items.
    """
    counts = np.diff(offsets)
    if len(counts) and (counts != counts[0]).any():
        raise ValueError(f"rows hold different numbers of items ({counts.min()}…{counts.max()})")
    p = int(counts[0]) if len(counts) else 0
    return values.reshape(len(counts), p, *values.shape[1:])


def embeddings_masksets(table: pa.Table, tokens: bool = True) -> list[MaskSet]:
    """Embedding rows (a table of ``embeddings_schema``) → one MaskSet per row, with RLE masks.

    Read column by column through Arrow: tokens go from the fixed-size-list column into one
    (B, P, T) array (never ``to_pylist``), then per row. ``data`` holds ``tokens`` (P, T) float32
    (when ``tokens``), ``iou_pred``, ``stability`` (P,) and ``points`` (P, 2).
    """
    n = table.num_rows
    heights = table.column("height").to_numpy()
    widths = table.column("width").to_numpy()
    iou = per_row(*list_values(table.column("iou"))).astype(np.float32)
    stability = per_row(*list_values(table.column("stability"))).astype(np.float32)
    points = per_row(*list_values(table.column("points"))).astype(np.float32)
    boxes = per_row(*list_values(table.column("boxes"))).astype(np.float32)
    toks = per_row(*list_values(table.column("tokens"))) if tokens else None
    counts = table.column("mask_counts").to_pylist()
    sets = []
    for i in range(n):
        size = [int(heights[i]), int(widths[i])]
        data = {"iou_pred": iou[i], "stability": stability[i], "points": points[i]}
        if toks is not None:
            data["tokens"] = toks[i].astype(np.float32)
        sets.append(MaskSet(masks=[{"size": size, "counts": c} for c in counts[i]], boxes=boxes[i].reshape(-1, 4),
                            scores=iou[i], data=data))
    return sets


def embeddings_tokens(table: pa.Table) -> np.ndarray:
    """The ``tokens`` column of embedding rows as one (B, P, T) float16 array (through Arrow)."""
    return per_row(*list_values(table.column("tokens")))


def pseudo_masksets(table: pa.Table) -> list[MaskSet]:
    """Pseudo rows (a table of ``PSEUDO_SCHEMA``) → one MaskSet per row: RLE masks at the image's
    size, ``class_ids`` 0-based, ``scores`` SAM's predicted IoU, ``data["stage"]`` 11 or 12 (Stage
    1.1 / 1.2)."""
    heights, widths = table.column("height").to_numpy(), table.column("width").to_numpy()
    sets = []
    for i, row in enumerate(table.select(["class_id", "stage", "score", "boxes", "mask_counts"]).to_pylist()):
        size = [int(heights[i]), int(widths[i])]
        sets.append(MaskSet(masks=[{"size": size, "counts": c} for c in row["mask_counts"]],
                            boxes=np.asarray(row["boxes"], np.float32).reshape(-1, 4),
                            scores=np.asarray(row["score"], np.float32),
                            class_ids=np.asarray(row["class_id"], np.int64) - 1,
                            data={"stage": np.array([int(s.replace(".", "")) for s in row["stage"]], np.int8)}))
    return sets
