"""Ray Data stages shared by pipelines: callable classes over ``dict[str, np.ndarray]`` batches.

Each stage declares the columns it reads (``INPUT``) and fails naming itself and the missing
column. Stages run without a cluster too: call them on a dict batch.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..config import DataConfig, RuntimeConfig, SamConfig
from ..data.schema import embeddings_table, errors_table, shard_metadata
from ..data.shards import shard_name, utc_now, write_shard
from ..data.sources import Listing, read_unit
from ..data.storage import Location
from ..methods.sam_embed import prepare_image
from ..models.registry import ResolvedModel

log = logging.getLogger(__name__)


class MissingColumnError(KeyError):
    """A batch lacks a column a stage reads."""


def require_columns(stage: str, batch: dict, columns: Sequence[str]) -> None:
    """Raise MissingColumnError naming ``stage`` and the first missing column."""
    for col in columns:
        if col not in batch:
            raise MissingColumnError(f"stage {stage}: input batch has no column {col!r} (has {sorted(batch)})")


def object_column(values: list) -> np.ndarray:
    """A 1-d object array of ``values`` (lists stay lists: numpy would make a 2-d array of them)."""
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    return arr


class ReadDecodeStage:
    """CPU stage: work units → decoded, resized and padded images (one row per image).

    Args:
        data (DataConfig): reading settings (max pixels, Parquet columns).
        long_side (int): the model's input side S; images are resized so the long side is S and
            padded to (S, S) at the bottom/right.
        source (Location | None): where the units' paths live (``Listing.source``; None: local disk).

    Output columns: ``image_id``, ``path``, ``labels`` (object array of lists of str: Arrow
    ``list<string>`` between stages), ``height``, ``width`` (original),
    ``input_h``, ``input_w`` (resized), ``image`` (N, S, S, 3) uint8, ``error_type``, ``error_stage``,
    ``message`` ("" when ok).
    """

    INPUT = ("kind", "path", "image_ids", "labels", "rows", "row_group")

    def __init__(self, data: DataConfig, long_side: int, source: Optional[Location] = None) -> None:
        self.data = data
        self.long_side = long_side
        self.source = source

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        require_columns("read", batch, self.INPUT)
        rows: list[dict] = []
        s = self.long_side
        for i in range(len(batch["path"])):
            unit = {k: (batch[k][i].item() if hasattr(batch[k][i], "item") else batch[k][i]) for k in self.INPUT}
            for item in read_unit(unit, self.data, self.source):
                row = {"image_id": item.image_id, "path": item.path, "labels": [str(x) for x in item.labels],
                       "error_type": item.error_type, "error_stage": "read" if item.error_type else "",
                       "message": item.message, "height": 0, "width": 0, "input_h": 0, "input_w": 0,
                       "image": None}
                if not item.error_type:
                    try:
                        padded, (h, w) = prepare_image(item.image, s)
                    except Exception as exc:  # resize failures are per-image errors, not a dead task
                        row.update(error_type="resize", error_stage="read", message=f"{item.path}: {exc}")
                    else:
                        row.update(height=item.image.shape[0], width=item.image.shape[1], input_h=h, input_w=w,
                                   image=padded)
                rows.append(row)
        images = np.zeros((len(rows), s, s, 3), dtype=np.uint8)
        for k, r in enumerate(rows):
            if r["image"] is not None:
                images[k] = r["image"]
        out = {key: object_column([r[key] for r in rows])
               for key in ("image_id", "path", "labels", "error_type", "error_stage", "message")}
        for key in ("height", "width", "input_h", "input_w"):
            out[key] = np.asarray([r[key] for r in rows], dtype=np.int64)
        out["image"] = images
        return out


def read_decode_batch(batch: dict[str, np.ndarray], data: DataConfig, long_side: int,
                      source: Optional[Location] = None) -> dict[str, np.ndarray]:
    """``ReadDecodeStage`` as a plain function, so Ray Data runs it as stateless CPU tasks."""
    return ReadDecodeStage(data, long_side, source)(batch)


def read_images(listing: Listing, data: DataConfig, long_side: int, batch_size: int, pool):
    """The read half of every image pipeline: work units → decoded, resized and padded images
    (``ReadDecodeStage`` output) as CPU tasks, one block per unit so the first batch reaches the
    model as soon as one unit is decoded.

    Args:
        listing (Listing): the pending units and the source they are read from (its filesystem
            travels to the read tasks).
        data (DataConfig): reading settings.
        long_side (int): the model's input side.
        batch_size (int): files per read task (a Parquet unit is read whole: its row group).
        pool (ModelPool): ``read_tasks`` and ``read_cpus``.

    Returns:
        ray.data.Dataset.
    """
    import ray.data

    units = listing.units
    ds = ray.data.from_items(units, override_num_blocks=max(1, len(units)))
    read_batch = 1 if units and units[0]["kind"] == "parquet" else batch_size
    return ds.map_batches(
        read_decode_batch, fn_kwargs={"data": data, "long_side": long_side, "source": listing.source}, batch_size=read_batch,
        compute=ray.data.TaskPoolStrategy(size=pool.read_tasks), num_cpus=pool.read_cpus,
    )


class SamEmbedStage:
    """Model stage: SAM mask embeddings of decoded images (the model is built once per actor).

    Args:
        resolved (ResolvedModel): the SAM checkpoint to load.
        settings (SamConfig): grid, thresholds, precision, compile.
        runtime (RuntimeConfig): mask memory bounds and the batch size (compiled graphs).
        device (str): torch device.
        torch_threads (int): intra-op threads (0 keeps torch's default).

    Output columns: identity columns passed through, plus ``points`` (B, P, 2), ``tokens``
    (B, P, T) float16, ``iou``/``stability`` (B, P), ``boxes`` (B, P, 4), ``mask_counts`` (B,)
    object (each a list of P RLE count bytes), ``compile_s`` (B,) float (seconds this actor spent
    compiling or warming up, on the first row it outputs; 0 elsewhere). Rows that failed earlier,
    or fail here, carry ``error_type``/``message`` and zeros.
    """

    INPUT = ("image_id", "path", "labels", "height", "width", "input_h", "input_w", "image", "error_type",
             "error_stage", "message")

    def __init__(self, resolved: ResolvedModel, settings: SamConfig, runtime: RuntimeConfig | None = None,
                 device: str = "cpu", torch_threads: int = 0) -> None:
        import torch

        from ..methods.sam_embed import SamMaskEmbedder
        from ..models.sam import load_sam

        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.embedder = SamMaskEmbedder(load_sam(resolved), settings, runtime, device)
        self.prompts = settings.points_per_side ** 2
        self.compile_s = self.embedder.warm_up(self.embedder.runtime.batch_size) if settings.compile else 0.0

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        require_columns("embed", batch, self.INPUT)
        n, p, t = len(batch["image_id"]), self.prompts, self.embedder.token_dim
        out = {k: batch[k] for k in ("image_id", "path", "labels", "height", "width")}
        out["error_type"] = np.array(batch["error_type"], dtype=object)
        out["error_stage"] = np.array(batch["error_stage"], dtype=object)
        out["message"] = np.array(batch["message"], dtype=object)
        out["points"] = np.zeros((n, p, 2), np.float32)
        out["tokens"] = np.zeros((n, p, t), np.float16)
        out["iou"] = np.zeros((n, p), np.float32)
        out["stability"] = np.zeros((n, p), np.float32)
        out["boxes"] = np.zeros((n, p, 4), np.float32)
        counts = np.empty(n, dtype=object)
        counts[:] = [[] for _ in range(n)]
        ok = [i for i in range(n) if not batch["error_type"][i]]
        results = self._embed(batch, ok, out)
        for i, ms in results.items():
            out["points"][i] = ms.data["points"]
            out["tokens"][i] = ms.data["tokens"].astype(np.float16)
            out["iou"][i] = ms.data["iou_pred"]
            out["stability"][i] = ms.data["stability"]
            out["boxes"][i] = ms.boxes
            counts[i] = [r["counts"] for r in ms.masks]
        out["mask_counts"] = counts
        out["compile_s"] = np.zeros(n, np.float64)
        if n:
            out["compile_s"][0], self.compile_s = self.compile_s, 0.0
        return out

    def _embed(self, batch: dict, idx: list[int], out: dict) -> dict:
        """Embed rows ``idx`` in one call; if that fails, one by one, marking failures as errors."""
        if not idx:
            return {}
        sizes_in = [(int(batch["input_h"][i]), int(batch["input_w"][i])) for i in idx]
        sizes = [(int(batch["height"][i]), int(batch["width"][i])) for i in idx]
        try:
            sets = self.embedder.embed_prepared(batch["image"][idx], sizes_in, sizes)
            return dict(zip(idx, sets))
        except Exception as exc:
            if len(idx) > 1:
                log.warning("embed: batch of %d failed (%s); retrying image by image", len(idx), exc)
                results: dict = {}
                for i in idx:
                    results.update(self._embed(batch, [i], out))
                return results
            i = idx[0]
            out["error_type"][i] = type(exc).__name__
            out["error_stage"][i] = "embed"
            out["message"][i] = f"{batch['path'][i]}: SAM failed: {exc}"
            return {}


class ShardWriteStage:
    """Sink stage: one batch → one Parquet shard of ok rows (+ one errors shard), atomically.

    Args:
        stage_dir (str): e.g. ``RUN/embed``; errors go to ``stage_dir/errors``.
        fingerprint (str): configuration fingerprint stored in each shard's metadata.
        models (dict[str, str]): registry name → weights fingerprint, stored too.
        token_dim (int): width of the tokens column.

    Output: one row per batch: ``shard`` (name or ""), ``rows`` (ok rows written), ``errors``,
    ``compile_s`` (the batch's largest, passed on from the model stage when it has the column).
    """

    INPUT = ("image_id", "path", "labels", "height", "width", "points", "tokens", "iou", "stability", "boxes",
             "mask_counts", "error_type", "error_stage", "message")

    def __init__(self, stage_dir: str, fingerprint: str, models: dict[str, str], token_dim: int) -> None:
        self.stage_dir = Path(stage_dir)
        self.fingerprint = fingerprint
        self.models = models
        self.token_dim = token_dim

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        require_columns("write", batch, self.INPUT)
        failed = np.array([bool(e) for e in batch["error_type"]], dtype=bool)
        ok = np.flatnonzero(~failed)
        bad = np.flatnonzero(failed)
        name = ""
        if len(ok):
            sub = {k: batch[k][ok] for k in self.INPUT}
            name = shard_name(str(x) for x in sub["image_id"])
            table = embeddings_table(sub, self.token_dim)
            write_shard(table, self.stage_dir / name, shard_metadata("embeddings", self.fingerprint, self.models))
        if len(bad):
            write_errors(self.stage_dir, error_rows(batch, bad), self.fingerprint, self.models)
        compile_s = float(np.max(batch["compile_s"])) if "compile_s" in batch and len(batch["compile_s"]) else 0.0
        return {"shard": object_column([name]), "rows": np.array([len(ok)]), "errors": np.array([len(bad)]),
                "compile_s": np.array([compile_s])}


def write_shard_batch(batch: dict[str, np.ndarray], stage_dir: str, fingerprint: str, models: dict[str, str],
                      token_dim: int) -> dict[str, np.ndarray]:
    """``ShardWriteStage`` as a plain function, so Ray Data runs it as CPU tasks that the model
    actors never wait for (shard names derive from the ids, so writers never collide)."""
    return ShardWriteStage(stage_dir, fingerprint, models, token_dim)(batch)


def error_rows(batch: dict[str, np.ndarray], indices) -> list[dict]:
    """The errors-shard rows (``image_id``, ``path``, ``stage``, ``error_type``, ``message``) of the
    batch rows ``indices`` (rows whose ``error_type`` is set)."""
    return [{"image_id": batch["image_id"][i], "path": batch["path"][i], "stage": batch["error_stage"][i],
             "error_type": batch["error_type"][i], "message": batch["message"][i]} for i in indices]


def write_errors(stage_dir: Path, rows: list[dict], fingerprint: str, models: dict[str, str]) -> str:
    """Write error rows (keys image_id, path, stage, error_type, message) as one errors shard."""
    now = utc_now()
    table = errors_table({**r, "time": r.get("time", now)} for r in rows)
    name = shard_name(str(r["image_id"]) for r in rows)
    write_shard(table, Path(stage_dir) / "errors" / name, shard_metadata("errors", fingerprint, models))
    return name
