"""The embed pipeline: images → read/decode (CPU tasks) → SAM (actor pool) → Parquet shards.

``run_embed`` checks everything that can fail before Ray starts (source, model weights,
conflicting earlier output), skips images already written with the same fingerprint, streams the
rest through Ray Data, and keeps ``RUN/run.json`` current as shards land.
"""

from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from ..config import EmbedConfig, embed_fingerprint
from ..data.shards import (
    check_fingerprints,
    count_rows,
    list_shards,
    read_column,
    remove_temp_files,
    update_manifest,
    utc_now,
)
from ..data.sources import Listing, list_source, parse_source
from ..models.registry import ResolvedModel, models_dir_from_env, resolve_default
from ..models.sam import spec_with_arch, token_dim
from ..progress import Progress
from ..runtime import init_ray, plan_model_pool, quiet_ray_data, rows_until_stalled
from .stages import SamEmbedStage, read_images, write_errors, write_shard_batch

STAGE = "embed"


@dataclass
class EmbedSummary:
    """What an embed run did.

    Attributes:
        out (str): the stage directory.
        fingerprint (str): configuration fingerprint of the shards.
        model (str): the SAM used (registry name).
        total (int): images in the source.
        already_done (int): images skipped because a shard (or error row) already had them.
        embedded (int): images embedded by this run.
        errors (int): error rows written by this run (including non-image files found listing).
        rows_total (int), errors_total (int): rows now in the stage's shards and error shards.
        seconds (float): wall time of this run.
    """

    out: str
    fingerprint: str
    model: str
    total: int
    already_done: int
    embedded: int
    errors: int
    rows_total: int
    errors_total: int
    seconds: float


@dataclass
class EmbedPlan:
    """Everything resolved on the driver before Ray starts."""

    cfg: EmbedConfig
    stage_dir: Path
    sam: ResolvedModel
    fingerprint: str
    models: dict[str, str]
    token_dim: int
    listing: Listing
    already_done: int


def plan_embed(cfg: EmbedConfig) -> EmbedPlan:
    """Resolve source, model and resume state; raise on any problem before Ray work starts.

    Raises:
        SourceError, ModelNotFoundError, CheckpointError, StageConflictError, ValueError.
    """
    if cfg.images is None or cfg.out is None:
        raise ValueError("embed needs an image source (--images) and a run directory (--out)")
    source = parse_source(cfg.images)
    models_dir = models_dir_from_env(cfg.runtime.models_dir)
    sam = resolve_default("sam", cfg.sam.model, models_dir, cfg.sam.checkpoint)
    sam = ResolvedModel(spec_with_arch(sam), sam.location, sam.local)
    sam_fp = sam.fingerprint()
    fingerprint = embed_fingerprint(cfg, sam.spec.name, sam_fp)
    stage_dir = Path(cfg.out) / STAGE
    errors_dir = stage_dir / "errors"
    remove_temp_files(stage_dir)
    check_fingerprints([stage_dir, errors_dir], fingerprint, STAGE)
    if cfg.retry_errors:
        for shard in list_shards(errors_dir):
            shard.unlink()
    done = set(read_column(stage_dir, "image_id")) | set(read_column(errors_dir, "image_id"))
    listing = list_source(source, cfg.data, done, rows_per_unit=cfg.runtime.batch_size)
    return EmbedPlan(cfg, stage_dir, sam, fingerprint, {sam.spec.name: sam_fp}, token_dim(sam.spec.arch), listing,
                     listing.total - listing.pending)


def build_embed_dataset(plan: EmbedPlan, resources=None):
    """The lazy Ray Data graph of an embed run (units → read → SAM → shard writes).

    Returns:
        ray.data.Dataset of shard summaries (``shard``, ``rows``, ``errors``), one per written shard.
    """
    import ray.data

    cfg = plan.cfg
    resources = resources or init_ray(cfg.runtime.address)
    pool = plan_model_pool(cfg.runtime, resources)
    ds = read_images(plan.listing, cfg.data, plan.sam.spec.input_size, cfg.runtime.batch_size, pool)
    ds = ds.map_batches(
        SamEmbedStage,
        fn_constructor_kwargs={"resolved": plan.sam, "settings": cfg.sam, "runtime": cfg.runtime, "device": pool.device,
                               "torch_threads": pool.torch_threads},
        batch_size=cfg.runtime.batch_size, num_cpus=pool.num_cpus, num_gpus=pool.num_gpus, zero_copy_batch=True,
        # queued batches per actor: the next batch is already there when one finishes
        compute=ray.data.ActorPoolStrategy(size=pool.size, max_tasks_in_flight_per_actor=4),
    )
    return ds.map_batches(
        write_shard_batch,
        fn_kwargs={"stage_dir": str(plan.stage_dir), "fingerprint": plan.fingerprint, "models": plan.models,
                   "token_dim": plan.token_dim},
        batch_size=cfg.runtime.shard_size, compute=ray.data.TaskPoolStrategy(size=pool.write_tasks),
        num_cpus=pool.write_cpus,
    )


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("usam-ray", "ray", "torch", "segment-anything", "pyarrow"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def run_embed(cfg: EmbedConfig, log: Callable[[str], None] = print) -> EmbedSummary:
    """Run (or resume) the embed stage of ``cfg`` and return its summary.

    One progress display (``progress.Progress``) shows images done as shards land;
    ``RUN/run.json`` is updated with each shard.
    """
    start = time.time()
    plan = plan_embed(cfg)
    listing = plan.listing
    run_dir = Path(cfg.out)
    update_manifest(run_dir, STAGE, status="running", started=utc_now(), fingerprint=plan.fingerprint,
                    models=plan.models, config=cfg.model_dump(mode="json"), versions=_versions(),
                    source=str(cfg.images), total_images=listing.total)
    errors = 0
    if listing.errors:
        write_errors(plan.stage_dir, [{**e, "stage": "list"} for e in listing.errors], plan.fingerprint, plan.models)
        errors += len(listing.errors)
        log(f"embed: {len(listing.errors)} files are not images or not in a class folder (error rows written)")
    log(f"embed: {listing.total} images in {cfg.images}; {plan.already_done} already done, "
        f"{listing.pending} to embed with {plan.sam.spec.name} ({plan.sam.location}); fingerprint {plan.fingerprint}")
    embedded = 0
    if listing.pending:
        resources = init_ray(cfg.runtime.address, log)
        quiet_ray_data()
        pool = plan_model_pool(cfg.runtime, resources)
        log(f"embed: Ray has {resources.cpus:g} CPUs, {resources.gpus:g} GPUs; {pool.size} SAM actor(s) on "
            f"{pool.device} ({pool.num_cpus:g} CPU, {pool.num_gpus:g} GPU each, {cfg.sam.precision} precision"
            f"{', compiled' if cfg.sam.compile else ''}), {pool.read_tasks} read and {pool.write_tasks} write tasks")
        ds = build_embed_dataset(plan, resources)
        show = log if cfg.runtime.progress else (lambda _l: None)
        with Progress("embed", listing.pending, "images", show) as progress:
            for row in rows_until_stalled(ds.iter_rows(), cfg.runtime.stall_timeout_s, "embed", log):
                embedded += int(row["rows"])
                errors += int(row["errors"])
                if float(row["compile_s"]) > 0:
                    log(f"embed: torch.compile of the image encoder took {float(row['compile_s']):.1f}s (once per actor)")
                update_manifest(run_dir, STAGE, embedded_this_run=embedded, errors_this_run=errors)
                progress.update(int(row["rows"]) + int(row["errors"]), errors=errors)
    rows_total = count_rows(plan.stage_dir)
    errors_total = count_rows(plan.stage_dir / "errors")
    summary = EmbedSummary(str(plan.stage_dir), plan.fingerprint, plan.sam.spec.name, listing.total,
                           plan.already_done, embedded, errors, rows_total, errors_total, time.time() - start)
    image_errors = errors - len(listing.errors)
    complete = embedded + image_errors >= listing.pending
    update_manifest(run_dir, STAGE, status="complete" if complete else "incomplete", finished=utc_now(),
                    shards=len(list_shards(plan.stage_dir)), rows=rows_total, errors=errors_total,
                    summary=asdict(summary))
    return summary
