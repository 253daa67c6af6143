"""Shard sink: atomic Parquet writes, content-derived shard names, resume bookkeeping, run.json.

A stage directory holds ``part-<hash>.parquet`` shards and ``errors/part-<hash>.parquet``. A shard's
name is a hash of the image ids it holds, so a retried write of the same rows lands on the same
file; writes go to a temporary file renamed into place, so a killed run leaves whole shards only.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from .schema import META_FINGERPRINT, META_KIND, META_MODELS

MANIFEST = "run.json"
TMP_PREFIX = ".tmp-"
META_WRITER = b"usam_ray.writer"


class StageConflictError(RuntimeError):
    """A stage directory holds shards written with a different configuration."""


def utc_now() -> str:
    """Current UTC time, ISO 8601 with seconds."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def whoami() -> dict[str, str]:
    """Who is writing: ``host``, ``user``, ``pid``, the Ray ``node`` id when this process is in a Ray
    job or task, and the ``job`` (the submission id that ``usam-ray submit`` gave it) when submitted."""
    import getpass
    import socket
    import sys

    me = {"host": socket.gethostname(), "pid": str(os.getpid())}
    try:
        me["user"] = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        me["user"] = str(os.getuid())
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            me["node"] = ray.get_runtime_context().get_node_id()
    job = os.environ.get("USAM_RAY_SUBMISSION_ID")
    if job:
        me["job"] = job
    return me


def shard_name(image_ids: Iterable[str]) -> str:
    """``part-<16 hex>.parquet`` from the sorted ids: the same rows always get the same name."""
    digest = hashlib.sha1("\n".join(sorted(image_ids)).encode()).hexdigest()[:16]
    return f"part-{digest}.parquet"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f"{TMP_PREFIX}{uuid.uuid4().hex}-{path.name}"
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_shard(table: pa.Table, path: Path, metadata: dict[bytes, bytes]) -> None:
    """Write ``table`` with file ``metadata`` to ``path`` atomically (temp file, fsync, rename); the
    footer also says who wrote it (``whoami()`` under ``usam_ray.writer``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f"{TMP_PREFIX}{uuid.uuid4().hex}-{path.name}"
    metadata = {META_WRITER: json.dumps(whoami(), sort_keys=True).encode(), **metadata}
    schema = table.schema.with_metadata({**(table.schema.metadata or {}), **metadata})
    try:
        pq.write_table(table.cast(schema), tmp, compression="zstd")
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def list_shards(directory: Path) -> list[Path]:
    """The ``part-*.parquet`` files directly in ``directory``, sorted (none if it is missing)."""
    return sorted(directory.glob("part-*.parquet")) if directory.is_dir() else []


def remove_temp_files(directory: Path) -> int:
    """Delete leftovers of interrupted writes under ``directory``; returns how many."""
    if not directory.is_dir():
        return 0
    stale = list(directory.rglob(f"{TMP_PREFIX}*"))
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


@dataclass(frozen=True)
class ShardMeta:
    """What a shard's footer says (``data/schema.py`` ``shard_metadata`` writes it).

    Attributes:
        kind (str | None): ``embeddings``, ``instances``, … (None: not written by usam-ray).
        fingerprint (str | None): the configuration fingerprint of the stage that wrote it.
        models (dict[str, str]): registry name → weights fingerprint of the models used.
        schema (pa.Schema): the Arrow schema (column types, e.g. the token width).
        writer (dict[str, str]): who wrote it (``whoami()``: host, node, pid, job); empty for
            shards written before this was recorded.
    """

    kind: Optional[str]
    fingerprint: Optional[str]
    models: dict[str, str]
    schema: pa.Schema
    writer: dict[str, str] = field(default_factory=dict)


def read_shard_meta(path: Path) -> ShardMeta:
    """The one reader of shard footers: kind, fingerprint, models and schema of ``path``."""
    schema = pq.read_schema(path)
    meta = schema.metadata or {}

    def text(key: bytes) -> Optional[str]:
        return meta[key].decode() if key in meta else None

    return ShardMeta(text(META_KIND), text(META_FINGERPRINT), json.loads(meta.get(META_MODELS, b"{}")), schema,
                     json.loads(meta.get(META_WRITER, b"{}")))


def shard_fingerprint(path: Path) -> Optional[str]:
    """The ``usam_ray.fingerprint`` in a shard's footer (None if absent)."""
    return read_shard_meta(path).fingerprint


def check_fingerprints(directories: Iterable[Path], fingerprint: str, stage: str) -> None:
    """Fail when any shard in ``directories`` was written with another fingerprint.

    Raises:
        StageConflictError: names the shard, both fingerprints and what to do.
    """
    for directory in directories:
        for shard in list_shards(directory):
            found = shard_fingerprint(shard)
            if found != fingerprint:
                raise StageConflictError(
                    f"{shard} was written by {stage} with configuration fingerprint {found}, but this run's is "
                    f"{fingerprint}: use a new --out, or delete {directory} to recompute"
                )


def read_column(directory: Path, column: str) -> list[Any]:
    """All values of ``column`` across the shards of ``directory`` (reads only that column)."""
    values: list[Any] = []
    for shard in list_shards(directory):
        values.extend(pq.read_table(shard, columns=[column]).column(column).to_pylist())
    return values


def count_rows(directory: Path) -> int:
    """Total rows over the shards of ``directory`` (footers only)."""
    return sum(pq.read_metadata(s).num_rows for s in list_shards(directory))


def read_manifest(run_dir: Path) -> dict[str, Any]:
    """``RUN/run.json`` as a dict (empty skeleton when absent)."""
    path = run_dir / MANIFEST
    if not path.is_file():
        return {"stages": {}}
    return json.loads(path.read_text())


def update_manifest(run_dir: Path, stage: str, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into ``stages[stage]`` of ``RUN/run.json`` and rewrite it atomically; a
    ``status`` change also records who made it (``by``: ``whoami()``)."""
    manifest = read_manifest(run_dir)
    if "status" in fields:
        fields = {**fields, "by": whoami()}
    manifest.setdefault("stages", {}).setdefault(stage, {}).update(fields)
    manifest["updated"] = utc_now()
    atomic_write_bytes(run_dir / MANIFEST, json.dumps(manifest, indent=2, default=str).encode())
    return manifest
