"""Image sources: a folder (recursive), a class-per-folder tree, Parquet with image bytes.

Each may be a local (or mounted) path or a URI that pyarrow's filesystems read (``s3://bucket/images``,
``parquet:gs://bucket/shards``; ``data/storage.py``): listing and reading go through the source's
``Location``, which read tasks receive with the units.

A source is listed on the driver into *work units* (plain dicts, cheap: paths and ids, never
pixels), minus the image ids already done; CPU tasks then read and decode units
(``read_unit``). Listing also returns *listing errors*: files that are not images by extension,
or files outside any class folder, so that nothing is skipped silently.

Work unit keys: ``kind`` ("file" or "parquet"), ``path`` (str, inside the source's filesystem), ``image_ids`` (JSON list),
``labels`` (JSON list of label lists), ``rows`` (JSON list of row indices in the row group, parquet
only), ``row_group`` (int, parquet only; -1 for files).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Iterator, Literal, Optional

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ..config import DataConfig
from .decode import decode_image
from .storage import Location, StorageError, local, resolve


class SourceError(ValueError):
    """A source that cannot be listed (missing, empty, wrong columns); the message names it."""


@dataclass(frozen=True)
class SourceSpec:
    """A parsed source.

    Attributes:
        kind: "folder" (images under root, recursive), "classes" (root/<class>/...), "parquet".
        location (Location): the folder or Parquet file/folder, on its filesystem.
    """

    kind: Literal["folder", "classes", "parquet"]
    location: Location

    @property
    def root(self) -> str:
        """The source as the user sees it (absolute local path or URI)."""
        return self.location.text


def parse_source(text: str) -> SourceSpec:
    """Parse ``DIR``, ``classes:DIR``, ``parquet:PATH``, or a ``.parquet`` file / folder of them;
    each path may be a URI (``s3://bucket/images``, ``classes:s3://bucket/train``).

    Raises:
        SourceError: the path does not exist, or its filesystem cannot be opened.
    """
    if not text:
        raise SourceError("no image source given (--images)")
    kind: str = "folder"
    for prefix in ("classes:", "parquet:", "folder:"):
        if text.startswith(prefix):
            kind, text = prefix[:-1], text[len(prefix):]
            break
    try:
        location = resolve(text)
        found = location.kind()
    except (StorageError, OSError) as exc:
        raise SourceError(f"image source {text}: {exc}") from exc
    if found == pafs.FileType.NotFound:
        raise SourceError(f"image source {location.text} does not exist")
    is_dir = found == pafs.FileType.Directory
    if kind == "folder" and (location.path.endswith(".parquet") or (is_dir and _only_parquet(location))):
        kind = "parquet"
    if kind in ("folder", "classes") and not is_dir:
        raise SourceError(f"image source {location.text} is not a folder")
    return SourceSpec(kind, location)  # type: ignore[arg-type]


def _only_parquet(location: Location) -> bool:
    files = location.files()
    return bool(files) and all(p.endswith(".parquet") for p in files)


@dataclass
class Listing:
    """What listing a source found.

    Attributes:
        units (list[dict]): pending work units.
        pending (int): images in ``units``.
        total (int): images in the source, done or not.
        errors (list[dict]): rows for the errors shard (image_id, path, error_type, message).
        source (Location): where the units' paths live (give it to ``read_unit``).
    """

    units: list[dict]
    pending: int
    total: int
    errors: list[dict]
    source: Location


def _file_unit(path: str, image_id: str, labels: list[str]) -> dict:
    return {"kind": "file", "path": path, "image_ids": json.dumps([image_id]),
            "labels": json.dumps([labels]), "rows": "[]", "row_group": -1}


def list_source(spec: SourceSpec, data: DataConfig, done: set[str], rows_per_unit: int = 8) -> Listing:
    """List ``spec`` into pending work units, skipping ids in ``done``.

    Raises:
        SourceError: the source has no images at all, or a Parquet file lacks the image column.
    """
    try:
        if spec.kind == "parquet":
            listing = _list_parquet(spec.location, data, done, rows_per_unit)
        else:
            listing = _list_files(spec, data, done)
    except OSError as exc:  # a remote listing that fails (network, permissions)
        raise SourceError(f"image source {spec.root}: cannot list ({exc})") from exc
    if listing.total == 0:
        found = f" ({len(listing.errors)} non-image files)" if listing.errors else ""
        raise SourceError(f"image source {spec.root} holds no images{found}")
    return listing


def _list_files(spec: SourceSpec, data: DataConfig, done: set[str]) -> Listing:
    exts = {e.lower() for e in data.extensions}
    units: list[dict] = []
    errors: list[dict] = []
    total = 0
    where = spec.location
    for path in where.files():
        rel = where.relative(path)
        shown = where.show(path)
        labels: list[str] = []
        if spec.kind == "classes":
            if "/" not in rel:
                errors.append({"image_id": rel, "path": shown, "error_type": "no_class_folder",
                               "message": f"{shown}: not inside a class folder of {spec.root}"})
                continue
            labels = [rel.split("/", 1)[0]]
        suffix = os.path.splitext(rel)[1]
        if suffix.lower() not in exts:
            errors.append({"image_id": rel, "path": shown, "error_type": "skipped_extension",
                           "message": f"{shown}: extension {suffix or '(none)'} is not in data.extensions"})
            continue
        total += 1
        if rel not in done:
            units.append(_file_unit(path, rel, labels))
    errors = [e for e in errors if e["image_id"] not in done]
    return Listing(units, len(units), total, errors, where)


def _parquet_files(location: Location) -> list[str]:
    if location.kind() == pafs.FileType.File:
        return [location.path]
    return [p for p in location.files() if p.endswith(".parquet")]


def _open_parquet(location: Location, path: str) -> pq.ParquetFile:
    return pq.ParquetFile(location.filesystem.open_input_file(path))


def _labels_of(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def _list_parquet(location: Location, data: DataConfig, done: set[str], rows_per_unit: int) -> Listing:
    units: list[dict] = []
    errors: list[dict] = []
    seen: set[str] = set()
    total = 0
    single = location.kind() == pafs.FileType.File
    for path in _parquet_files(location):
        shown = location.show(path)
        try:
            pf = _open_parquet(location, path)
        except Exception as exc:
            raise SourceError(f"Parquet source {shown}: cannot read ({exc})") from exc
        names = pf.schema_arrow.names
        if data.image_column not in names:
            raise SourceError(f"Parquet source {shown} has no column {data.image_column!r} (columns: {names})")
        wanted = [c for c in (data.id_column, data.label_column) if c in names]
        rel = path.rsplit("/", 1)[-1] if single else location.relative(path)
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
                    where = f"{shown}#{offset + i}"
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
    return Listing(units, pending_count, total, errors, location)


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


def read_unit(unit: dict, data: DataConfig, source: Optional[Location] = None) -> Iterator[DecodedImage]:
    """Read and decode the images of one work unit from ``source`` (``Listing.source``; default:
    local disk); failures become DecodedImage errors."""
    from .decode import ImageDecodeError

    where = source if source is not None else local("/")
    ids = json.loads(unit["image_ids"])
    labels = json.loads(unit["labels"])
    shown = where.show(unit["path"])
    if unit["kind"] == "file":
        blobs: list[tuple[str, Any]] = []
        try:
            blobs.append((shown, where.read_bytes(unit["path"])))
        except OSError as exc:
            yield DecodedImage(ids[0], shown, labels[0], None, "unreadable", f"{shown}: cannot read ({exc})")
            return
    else:
        rows = json.loads(unit["rows"])
        try:
            table = _open_parquet(where, unit["path"]).read_row_group(int(unit["row_group"]), columns=[data.image_column])
            column = table.column(data.image_column)
            blobs = [(f"{shown}#{ids[k]}", column[r].as_py()) for k, r in enumerate(rows)]
        except Exception as exc:
            for image_id, lab in zip(ids, labels):
                yield DecodedImage(image_id, shown, lab, None, "unreadable",
                                   f"{shown} row group {unit['row_group']}: cannot read ({exc})")
            return
    for (where, blob), image_id, lab in zip(blobs, ids, labels):
        if blob is None:
            yield DecodedImage(image_id, where, lab, None, "empty", f"{where}: image bytes are null")
            continue
        try:
            yield DecodedImage(image_id, where, lab, decode_image(bytes(blob), where, data.max_pixels))
        except ImageDecodeError as exc:
            yield DecodedImage(image_id, where, lab, None, exc.kind, str(exc))
