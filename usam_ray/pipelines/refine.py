"""``usam-ray refine``: coarse semantic labels + their images → UO-SAM (SAM once per image, LRO then
GRO) on an actor pool → a labels directory.

The output is a labels directory like ``label``'s (semantic PNGs, ``images/`` and ``instances/``
shards, COCO files, overlays), with provenance ``uosam`` (``uosam_lro`` with ``--no-global``) on
every instance. ``lro_out`` also writes the LRO-only labels from the same SAM pass. Like every image
stage it checks what can fail before Ray starts, skips images already refined with the same
fingerprint, and turns a failing image — one without a coarse PNG included — into a row of
``OUT/errors``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..config import LabelSettings, RefineConfig, RuntimeConfig, SamConfig, UoSamSettings, stable_hash
from ..data.coarse import CoarseLabels
from ..data.shards import (
    check_fingerprints, list_shards, read_column, remove_temp_files, shard_name, update_manifest, utc_now,
)
from ..data.sources import Listing, list_source, parse_source
from ..models.registry import ResolvedModel, models_dir_from_env, resolve_default
from ..models.sam import spec_with_arch
from ..progress import Progress
from ..runtime import init_ray, plan_model_pool, quiet_ray_data, rows_until_stalled
from .label import LabelSummary
from .label_fmbseg import labelled_ids, write_label_batch
from .label_stage import LabelledImage, write_labelled_shard
from .stages import object_column, read_images, require_columns, write_errors

STAGE = "refine"


@dataclass
class RefinePlan:
    """Everything resolved on the driver before Ray starts."""

    cfg: RefineConfig
    coarse: CoarseLabels
    classes: list[str]  # without background (instances' class names by 0-based id)
    sam: ResolvedModel
    fingerprint: str
    provenance: str
    listing: Listing
    already_done: int


def provenance(settings: UoSamSettings) -> str:
    """``uosam`` (LRO + GRO) or ``uosam_lro`` (LRO only)."""
    return "uosam" if settings.use_global else "uosam_lro"


def plan_refine(cfg: RefineConfig) -> RefinePlan:
    """Resolve the coarse labels, SAM and the source; raise before Ray starts.

    Raises:
        CoarseLabelsError, SourceError, ModelNotFoundError, CheckpointError, StageConflictError, ValueError.
    """
    if cfg.labels is None or cfg.images is None or cfg.out is None:
        raise ValueError("refine needs --labels (coarse labels), --images and --out")
    coarse = CoarseLabels(Path(cfg.labels), cfg.classes_file)
    if Path(cfg.out).resolve() == Path(cfg.labels).resolve():
        raise ValueError(f"refine: --out {cfg.out} is the coarse labels folder; write the refined labels elsewhere")
    sam = resolve_default("sam", cfg.sam.model, models_dir_from_env(cfg.runtime.models_dir), cfg.sam.checkpoint)
    sam = ResolvedModel(spec_with_arch(sam), sam.location, sam.local)
    fingerprint = stable_hash({
        "stage": STAGE, "labels": str(Path(cfg.labels).resolve()), "classes": coarse.classes,
        "sam": sam.fingerprint(), "uosam": cfg.uosam.model_dump(), "lro_out": cfg.lro_out is not None,
        "sam_settings": cfg.sam.model_dump(mode="json", exclude={"model", "checkpoint", "compile"}),
        "data": cfg.data.model_dump(mode="json", exclude={"extensions"})})
    outs = [Path(cfg.out)] + ([Path(cfg.lro_out)] if cfg.lro_out is not None else [])
    for out in outs:
        remove_temp_files(out)
        check_fingerprints([out / "instances", out / "errors"], fingerprint, STAGE)
        if cfg.retry_errors:
            for shard in list_shards(out / "errors"):
                shard.unlink()
    done = set.intersection(*[labelled_ids(o) for o in outs]) | set(read_column(outs[0] / "errors", "image_id"))
    listing = list_source(parse_source(cfg.images), cfg.data, done, rows_per_unit=cfg.runtime.batch_size)
    return RefinePlan(cfg, coarse, coarse.classes[1:], sam, fingerprint, provenance(cfg.uosam), listing,
                      listing.total - listing.pending)


class RefineStage:
    """Model stage: UO-SAM refinement of decoded images' coarse labels (SAM built once per actor).

    Args:
        sam (ResolvedModel): the SAM checkpoint.
        labels (str), classes_file (str | None): the coarse labels folder (read here, per image).
        settings (UoSamSettings), sam_settings (SamConfig), runtime (RuntimeConfig): as their sections.
        lro_too (bool): also return the LRO-only labels (column ``lro``).
        device (str): torch device; torch_threads (int): intra-op threads (0: torch's default).

    Output columns: ``image_id``, ``path``, the error columns, ``row`` and ``lro`` (bytes: pickled
    ``LabelledImage``, b"" on error or when not asked for).
    """

    INPUT = ("image_id", "path", "height", "width", "input_h", "input_w", "image", "error_type", "error_stage",
             "message")

    def __init__(self, sam: ResolvedModel, labels: str, classes_file: Optional[str], settings: UoSamSettings,
                 sam_settings: SamConfig, runtime: RuntimeConfig | None = None, lro_too: bool = False,
                 device: str = "cpu", torch_threads: int = 0) -> None:
        import torch

        from ..methods.sam_embed import SamMaskEmbedder
        from ..methods.uosam import UoSam
        from ..models.sam import load_sam

        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.coarse = CoarseLabels(Path(labels), Path(classes_file) if classes_file else None)
        embedder = SamMaskEmbedder(load_sam(sam), sam_settings, runtime, device)
        auto = LabelSettings(min_iou_pred=settings.min_iou_pred, min_area=settings.min_area, nms_iou=settings.nms_iou)
        self.uosam = UoSam(embedder, auto, settings.use_global, settings.min_vote, settings.background_votes,
                           settings.every_component, settings.min_component)
        self.lro_too = lro_too
        self.min_area = settings.min_area

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import pickle

        from ..methods.fmbseg import instances_from_map

        require_columns("refine", batch, self.INPUT)
        n = len(batch["image_id"])
        out = {k: batch[k] for k in ("image_id", "path")}
        for k in ("error_type", "error_stage", "message"):
            out[k] = np.array(batch[k], dtype=object)
        rows, lros = [b""] * n, [b""] * n

        def fail(i: int, kind: str, message: str) -> None:
            out["error_type"][i], out["error_stage"][i], out["message"][i] = kind, "refine", message

        coarse = {}
        for i in range(n):
            if batch["error_type"][i]:
                continue
            try:
                coarse[i] = self.coarse.read(str(batch["image_id"][i]), (int(batch["height"][i]), int(batch["width"][i])))
            except Exception as exc:  # no PNG, unreadable, ids beyond the classes
                fail(i, "coarse_label", str(exc))
        ok = sorted(coarse)
        try:
            refined = self.uosam.refine_batch(batch["image"][ok], [(int(batch["input_h"][i]), int(batch["input_w"][i]))
                                                                   for i in ok], [coarse[i] for i in ok]) if ok else []
        except Exception as exc:  # a batch-wide failure: every image of it becomes an error row
            for i in ok:
                fail(i, type(exc).__name__, f"{batch['path'][i]}: UO-SAM failed: {exc}")
            ok, refined = [], []
        for i, r in zip(ok, refined):
            image_id, path = str(batch["image_id"][i]), str(batch["path"][i])
            rows[i] = pickle.dumps(LabelledImage(image_id, path, instances_from_map(r.semantic, min_area=self.min_area), r.semantic))
            if self.lro_too:
                lros[i] = pickle.dumps(LabelledImage(image_id, path, instances_from_map(r.lro, min_area=self.min_area), r.lro))
        out["row"], out["lro"] = object_column(rows), object_column(lros)
        return out


def write_refine_batch(batch: dict[str, np.ndarray], labels_dir: str, lro_dir: Optional[str], classes: list[str],
                       fingerprint: str, provenance: str, overlays: bool) -> dict[str, np.ndarray]:
    """Sink task: the LRO-only labels shard in ``lro_dir`` (when asked, written first: the main
    instance shard marks the batch done), then ``label_fmbseg.write_label_batch`` for the labels
    shard and the errors shard in ``labels_dir``; one summary row out."""
    import pickle

    ok = [i for i, e in enumerate(batch["error_type"]) if not e]
    if lro_dir is not None and ok:
        images = [pickle.loads(batch["lro"][i]) for i in ok]
        write_labelled_shard(Path(lro_dir), shard_name(im.image_id for im in images), images, classes, fingerprint,
                             "uosam_lro", False)
    return write_label_batch(batch, labels_dir, classes, fingerprint, provenance, overlays)


def run_refine(cfg: RefineConfig, log: Callable[[str], None] = print) -> LabelSummary:
    """Refine (or go on refining) the coarse labels ``cfg.labels`` of ``cfg.images`` into ``cfg.out``."""
    import ray.data

    from .label_outputs import write_label_outputs

    start = time.time()
    plan = plan_refine(cfg)
    out, listing = Path(cfg.out), plan.listing
    update_manifest(out.parent, STAGE, status="running", started=utc_now(), fingerprint=plan.fingerprint,
                    models={plan.sam.spec.name: plan.sam.fingerprint()}, method=plan.provenance,
                    config=cfg.model_dump(mode="json"), total_images=listing.total)
    what = "LRO + GRO" if cfg.uosam.use_global else "LRO only"
    log(f"refine: {listing.total} images in {cfg.images}; {plan.already_done} already refined, {listing.pending} to "
        f"refine from {cfg.labels} ({len(plan.classes)} classes) with UO-SAM ({what}, {plan.sam.spec.name})")
    errors = images = instances = 0
    if listing.errors:
        write_errors(out, [{**e, "stage": "list"} for e in listing.errors], plan.fingerprint, {})
        errors += len(listing.errors)
    if listing.pending:
        resources = init_ray(cfg.runtime.address, log)
        quiet_ray_data()
        pool = plan_model_pool(cfg.runtime, resources)
        ds = read_images(listing, cfg.data, plan.sam.spec.input_size, cfg.runtime.batch_size, pool)
        ds = ds.map_batches(
            RefineStage,
            fn_constructor_kwargs={"sam": plan.sam, "labels": str(cfg.labels),
                                   "classes_file": str(cfg.classes_file) if cfg.classes_file else None,
                                   "settings": cfg.uosam, "sam_settings": cfg.sam, "runtime": cfg.runtime,
                                   "lro_too": cfg.lro_out is not None, "device": pool.device,
                                   "torch_threads": pool.torch_threads},
            batch_size=cfg.runtime.batch_size, num_cpus=pool.num_cpus, num_gpus=pool.num_gpus, zero_copy_batch=True,
            compute=ray.data.ActorPoolStrategy(size=pool.size, max_tasks_in_flight_per_actor=4))
        ds = ds.map_batches(
            write_refine_batch,
            fn_kwargs={"labels_dir": str(out), "lro_dir": str(cfg.lro_out) if cfg.lro_out is not None else None,
                       "classes": plan.classes, "fingerprint": plan.fingerprint, "provenance": plan.provenance,
                       "overlays": cfg.overlays},
            batch_size=cfg.runtime.shard_size, compute=ray.data.TaskPoolStrategy(size=pool.write_tasks),
            num_cpus=pool.write_cpus)
        with Progress("refine", listing.pending, "images", log if cfg.runtime.progress else (lambda _l: None)) as progress:
            for row in rows_until_stalled(ds.iter_rows(), cfg.runtime.stall_timeout_s, "refine", log):
                images += int(row["images"])
                instances += int(row["instances"])
                errors += int(row["errors"])
                progress.update(int(row["images"]) + int(row["errors"]), instances=instances, errors=errors)
    if cfg.lro_out is not None:
        write_label_outputs(Path(cfg.lro_out), plan.classes, plan.fingerprint, cfg.export)
    images_total, instances_total, exports = write_label_outputs(out, plan.classes, plan.fingerprint, cfg.export)
    summary = LabelSummary(str(out), plan.fingerprint, plan.already_done, images, instances, images_total,
                           instances_total, time.time() - start, exports)
    complete = images + errors - len(listing.errors) >= listing.pending
    update_manifest(out.parent, STAGE, status="complete" if complete else "incomplete", finished=utc_now(),
                    images=images_total, instances=instances_total, errors=len(read_column(out / "errors", "image_id")))
    log(f"refine: {images} images refined ({instances} instances), {errors} errors, {images_total} in {out} "
        f"({summary.seconds:.1f}s)")
    return summary

