"""Image sources: a folder (recursive), a class-per-folder tree, Parquet with image bytes.

A source is listed on the driver into *work units* (plain dicts, cheap: paths and ids, never
pixels), minus the image ids already done; CPU tasks then read and decode units
(``read_unit``). Listing also returns *listing errors*: files that are not images by extension,
or files outside any class folder, so that nothing is skipped silently.

Work unit keys: ``kind`` ("file" or "parquet"), ``path`` (str), ``image_ids`` (JSON list),
``labels`` (JSON list of label lists), ``rows`` (JSON list of row indices in the row group, parquet
only), ``row_group`` (int, parquet only; -1 for files).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

import pyarrow.parquet as pq

from ..config import DataConfig
from .decode import decode_image


class SourceError(ValueError):
    """A source that cannot be listed (missing, empty, wrong columns); the message names it."""


@dataclass(frozen=True)
class SourceSpec:
    """A parsed source.

    Attributes:
        kind: "folder" (images under root, recursive), "classes" (root/<class>/...), "parquet".
        root (Path): the folder or Parquet file/folder.
    """

    kind: Literal["folder", "classes", "parquet"]
    root: Path


def parse_source(text: str) -> SourceSpec:
    """Parse ``DIR``, ``classes:DIR``, ``parquet:PATH``, or a ``.parquet`` file / folder of them.

    Raises:
        SourceError: the path does not exist.
    """
    if not text:
        raise SourceError("no image source given (--images)")
    kind: str = "folder"
    for prefix in ("classes:", "parquet:", "folder:"):
        if text.startswith(prefix):
            kind, text = prefix[:-1], text[len(prefix):]
            break
    root = Path(text).expanduser()
    if not root.exists():
        raise SourceError(f"image source {root} does not exist")
    if kind == "folder" and (root.suffix == ".parquet" or (root.is_dir() and _only_parquet(root))):
        kind = "parquet"
    if kind in ("folder", "classes") and not root.is_dir():
        raise SourceError(f"image source {root} is not a folder")
    return SourceSpec(kind, root)  # type: ignore[arg-type]


def _only_parquet(root: Path) -> bool:
    files = [p for p in root.rglob("*") if p.is_file() and not _hidden(p, root)]
    return bool(files) and all(p.suffix == ".parquet" for p in files)


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


@dataclass
class Listing:
    """What listing a source found.

    Attributes:
        units (list[dict]): pending work units.
        pending (int): images in ``units``.
        total (int): images in the source, done or not.
        errors (list[dict]): rows for the errors shard (image_id, path, error_type, message).
    """

    units: list[dict]
    pending: int
    total: int
    errors: list[dict]


def _file_unit(path: Path, image_id: str, labels: list[str]) -> dict:
    return {"kind": "file", "path": str(path), "image_ids": json.dumps([image_id]),
            "labels": json.dumps([labels]), "rows": "[]", "row_group": -1}


def list_source(spec: SourceSpec, data: DataConfig, done: set[str], rows_per_unit: int = 8) -> Listing:
    """List ``spec`` into pending work units, skipping ids in ``done``.

    Raises:
        SourceError: the source has no images at all, or a Parquet file lacks the image column.
    """
    if spec.kind == "parquet":
        listing = _list_parquet(spec.root, data, done, rows_per_unit)
    else:
        listing = _list_files(spec, data, done)
    if listing.total == 0:
        found = f" ({len(listing.errors)} non-image files)" if listing.errors else ""
        raise SourceError(f"image source {spec.root} holds no images{found}")
    return listing


def _list_files(spec: SourceSpec, data: DataConfig, done: set[str]) -> Listing:
    exts = {e.lower() for e in data.extensions}
    units: list[dict] = []
    errors: list[dict] = []
    total = 0
    for path in sorted(p for p in spec.root.rglob("*") if p.is_file() and not _hidden(p, spec.root)):
        rel = path.relative_to(spec.root).as_posix()
        labels: list[str] = []
        if spec.kind == "classes":
            if len(path.relative_to(spec.root).parts) < 2:
                errors.append({"image_id": rel, "path": str(path), "error_type": "no_class_folder",
                               "message": f"{path}: not inside a class folder of {spec.root}"})
                continue
            labels = [path.relative_to(spec.root).parts[0]]
        if path.suffix.lower() not in exts:
            errors.append({"image_id": rel, "path": str(path), "error_type": "skipped_extension",
                           "message": f"{path}: extension {path.suffix or '(none)'} is not in data.extensions"})
            continue
        total += 1
        if rel not in done:
            units.append(_file_unit(path, rel, labels))
    errors = [e for e in errors if e["image_id"] not in done]
    return Listing(units, len(units), total, errors)


def _parquet_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*.parquet") if not _hidden(p, root))


def _labels_of(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def _list_parquet(root: Path, data: DataConfig, done: set[str], rows_per_unit: int) -> Listing:
    units: list[dict] = []
    errors: list[dict] = []
    seen: set[str] = set()
    total = 0
    base = root if root.is_dir() else root.parent
    for path in _parquet_files(root):
        try:
            pf = pq.ParquetFile(path)
        except Exception as exc:
            raise SourceError(f"Parquet source {path}: cannot read ({exc})") from exc
        names = pf.schema_arrow.names
        if data.image_column not in names:
            raise SourceError(f"Parquet source {path} has no column {data.image_column!r} (columns: {names})")
        wanted = [c for c in (data.id_column, data.label_column) if c in names]
        rel = path.relative_to(base).as_posix()
        offset = 0
        for rg in range(pf.num_row_groups):
            part = pf.read_row_group(rg, columns=wanted) if wanted else None
            n = pf.metadata.row_group(rg).num_rows
            ids = (part.column(data.id_column).to_pylist() if part is not None and data.id_column in wanted
                   else [f"{rel}#{offset + i}" for i in range(n)])
            labels = (part.column(data.label_column).to_pylist() if part is not None and data.label_column in wanted
                      else [None] * n)
            pending = []
            for i in range(n):
                image_id = str(ids[i])
                if image_id in seen:
                    where = f"{path}#{offset + i}"
                    errors.append({"image_id": f"{image_id}@{rel}#{offset + i}", "path": where,
                                   "error_type": "duplicate_id",
                                   "message": f"{where}: image id {image_id!r} was already used by an earlier row"})
                    continue
                seen.add(image_id)
                total += 1
                if image_id not in done:
                    pending.append(i)
            for start in range(0, len(pending), rows_per_unit):
                chunk = pending[start:start + rows_per_unit]
                units.append({
                    "kind": "parquet", "path": str(path), "row_group": rg, "rows": json.dumps(chunk),
                    "image_ids": json.dumps([str(ids[i]) for i in chunk]),
                    "labels": json.dumps([_labels_of(labels[i]) for i in chunk]),
                })
            offset += n
    pending_count = sum(len(json.loads(u["rows"])) for u in units)
    errors = [e for e in errors if e["image_id"] not in done]
    return Listing(units, pending_count, total, errors)


@dataclass
class DecodedImage:
    """One image read from a unit, or the reason it could not be.

    Attributes:
        image_id (str), path (str), labels (list[str]): identity.
        image (np.ndarray | None): (H, W, 3) uint8 RGB, None on error.
        error_type (str): "" when ok; else a short kind (``empty``, ``corrupt``, ``too_large``,
            ``not_an_image``, ``unreadable``).
        message (str): the error message naming the file.
    """

    image_id: str
    path: str
    labels: list[str]
    image: Any
    error_type: str = ""
    message: str = ""


def read_unit(unit: dict, data: DataConfig) -> Iterator[DecodedImage]:
    """Read and decode the images of one work unit; failures become DecodedImage errors."""
    from .decode import ImageDecodeError

    ids = json.loads(unit["image_ids"])
    labels = json.loads(unit["labels"])
    if unit["kind"] == "file":
        blobs: list[tuple[str, Any]] = []
        try:
            blobs.append((unit["path"], Path(unit["path"]).read_bytes()))
        except OSError as exc:
            yield DecodedImage(ids[0], unit["path"], labels[0], None, "unreadable", f"{unit['path']}: cannot read ({exc})")
            return
    else:
        rows = json.loads(unit["rows"])
        try:
            table = pq.ParquetFile(unit["path"]).read_row_group(int(unit["row_group"]), columns=[data.image_column])
            column = table.column(data.image_column)
            blobs = [(f"{unit['path']}#{ids[k]}", column[r].as_py()) for k, r in enumerate(rows)]
        except Exception as exc:
            for image_id, lab in zip(ids, labels):
                yield DecodedImage(image_id, unit["path"], lab, None, "unreadable",
                                   f"{unit['path']} row group {unit['row_group']}: cannot read ({exc})")
            return
    for (where, blob), image_id, lab in zip(blobs, ids, labels):
        if blob is None:
            yield DecodedImage(image_id, where, lab, None, "empty", f"{where}: image bytes are null")
            continue
        try:
            yield DecodedImage(image_id, where, lab, decode_image(bytes(blob), where, data.max_pixels))
        except ImageDecodeError as exc:
            yield DecodedImage(image_id, where, lab, None, exc.kind, str(exc))
