"""``usam-ray refine``: coarse semantic labels + their images → UO-SAM (SAM once per image, LRO then
GRO) on an actor pool → a labels directory.

The output is a labels directory like ``label``'s (semantic PNGs, ``images/`` and ``instances/``
shards, COCO files, overlays), with provenance ``uosam`` (``uosam_lro`` with ``--no-global``) on
every instance. ``lro_out`` also writes the LRO-only labels from the same SAM pass. Like every image
stage it checks what can fail before Ray starts, skips images already refined with the same
fingerprint, and turns a failing image — one without a coarse PNG included — into a row of
``OUT/errors``. ``run_refine_many`` refines several label sets of the same images (several
segmenters' outputs) in one pass: SAM encodes each image once and makes GRO's automatic masks
once for all of them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

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
from .label_fmbseg import labelled_ids, write_labelled_and_errors
from .label_stage import LabelledImage, write_labelled_shard
from .stages import error_rows, object_column, read_images, require_columns, write_errors

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
    done: set[str] = field(default_factory=set)  # image ids refined (or failed) before, in every output


@dataclass(frozen=True)
class RefineInput:
    """One coarse label set for ``RefineStage``: where it is, whether LRO-only labels are wanted,
    and the images of the pass it already has (refined by an earlier run: skipped)."""

    labels: str
    classes_file: Optional[str] = None
    lro: bool = False
    skip: frozenset[str] = frozenset()


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
                      listing.total - listing.pending, done)


class RefineStage:
    """Model stage: UO-SAM refinement of decoded images' coarse labels, for one or more coarse label
    sets (SAM built once per actor; each image encoded once, its automatic masks made once).

    Args:
        sam (ResolvedModel): the SAM checkpoint.
        inputs (list[RefineInput]): the coarse label sets (read here, per image).
        settings (UoSamSettings), sam_settings (SamConfig), runtime (RuntimeConfig): as their sections.
        device (str): torch device; torch_threads (int): intra-op threads (0: torch's default).

    Output columns: ``image_id``, ``path``, the read error columns, and ``results`` (bytes: a pickled
    list with one entry per input: ``("skip",)`` (refined before), ``("read",)`` (the read error of
    the row), ``("error", type, message)`` or ``("ok", LabelledImage, LabelledImage of LRO or None)``).
    """

    INPUT = ("image_id", "path", "height", "width", "input_h", "input_w", "image", "error_type", "error_stage",
             "message")

    def __init__(self, sam: ResolvedModel, inputs: list[RefineInput], settings: UoSamSettings,
                 sam_settings: SamConfig, runtime: RuntimeConfig | None = None, device: str = "cpu",
                 torch_threads: int = 0) -> None:
        import torch

        from ..methods.sam_embed import SamMaskEmbedder
        from ..methods.uosam import UoSam
        from ..models.sam import load_sam

        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.inputs = inputs
        self.coarse = [CoarseLabels(Path(i.labels), Path(i.classes_file) if i.classes_file else None) for i in inputs]
        embedder = SamMaskEmbedder(load_sam(sam), sam_settings, runtime, device)
        auto = LabelSettings(min_iou_pred=settings.min_iou_pred, min_area=settings.min_area, nms_iou=settings.nms_iou)
        self.uosam = UoSam(embedder, auto, settings.use_global, settings.min_vote, settings.background_votes,
                           settings.every_component, settings.min_component)
        self.min_area = settings.min_area

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import pickle

        from ..methods.fmbseg import instances_from_map

        require_columns("refine", batch, self.INPUT)
        n, k = len(batch["image_id"]), len(self.inputs)
        out = {c: batch[c] for c in ("image_id", "path")}
        for c in ("error_type", "error_stage", "message"):
            out[c] = np.array(batch[c], dtype=object)
        read_ok = [i for i in range(n) if not batch["error_type"][i]]
        results = [[("skip",) if str(batch["image_id"][i]) in inp.skip else ("read",) for inp in self.inputs]
                   for i in range(n)]
        maps: list[list[Optional[np.ndarray]]] = [[None] * n for _ in range(k)]
        for j, coarse in enumerate(self.coarse):
            for i in read_ok:
                image_id = str(batch["image_id"][i])
                if results[i][j][0] == "skip":
                    continue
                try:
                    maps[j][i] = coarse.read(image_id, (int(batch["height"][i]), int(batch["width"][i])))
                except Exception as exc:  # no PNG, unreadable, ids beyond the classes
                    results[i][j] = ("error", "coarse_label", str(exc))
        todo = [i for i in read_ok if any(m[i] is not None for m in maps)]
        try:
            refined = self.uosam.refine_many(
                batch["image"][todo], [(int(batch["input_h"][i]), int(batch["input_w"][i])) for i in todo],
                [[m[i] for i in todo] for m in maps]) if todo else [[] for _ in maps]
        except Exception as exc:  # a batch-wide failure: every image of it becomes an error row of every input
            for i in todo:
                for j in range(k):
                    if maps[j][i] is not None:
                        results[i][j] = ("error", type(exc).__name__, f"{batch['path'][i]}: UO-SAM failed: {exc}")
            refined = [[None] * len(todo) for _ in maps]
        for j, per_image in enumerate(refined):
            for i, r in zip(todo, per_image):
                if r is None:
                    continue
                image_id, path = str(batch["image_id"][i]), str(batch["path"][i])
                lro = LabelledImage(image_id, path, instances_from_map(r.lro, min_area=self.min_area), r.lro) \
                    if self.inputs[j].lro else None
                results[i][j] = ("ok", LabelledImage(image_id, path, instances_from_map(r.semantic, min_area=self.min_area),
                                                     r.semantic), lro)
        out["results"] = object_column([pickle.dumps(r) for r in results])
        return out


def write_refine_batch(batch: dict[str, np.ndarray], targets: list[dict]) -> dict[str, np.ndarray]:
    """Sink task: for each input's target (``labels_dir``, ``lro_dir``, ``classes``, ``fingerprint``,
    ``provenance``, ``overlays``), the LRO-only labels shard in ``lro_dir`` (when asked, written
    first: the main instance shard marks the batch done), then its labels and errors shards
    (``label_fmbseg.write_labelled_and_errors``). One summary row out per target (``target``, ``images``,
    ``instances``, ``errors``, ``skipped``); a read error is an error of every target that had the image to do."""
    import pickle

    results = [pickle.loads(r) for r in batch["results"]]
    rows: dict[str, list[int]] = {"target": [], "images": [], "instances": [], "errors": [], "skipped": []}
    for j, t in enumerate(targets):
        mine = [(i, r[j]) for i, r in enumerate(results) if r[j][0] != "skip"]
        images = [r[1] for _, r in mine if r[0] == "ok"]
        lros = [r[2] for _, r in mine if r[0] == "ok" and r[2] is not None]
        errors = [{**error_rows(batch, [i])[0],
                   **({} if r[0] == "read" else {"stage": "refine", "error_type": r[1], "message": r[2]})}
                  for i, r in mine if r[0] in ("read", "error")]
        if t["lro_dir"] is not None and lros:
            write_labelled_shard(Path(t["lro_dir"]), shard_name(im.image_id for im in lros), lros, t["classes"],
                                 t["fingerprint"], "uosam_lro", False)
        instances = write_labelled_and_errors(Path(t["labels_dir"]), images, errors, t["classes"], t["fingerprint"],
                                              t["provenance"], t["overlays"])
        for c, v in (("target", j), ("images", len(images)), ("instances", instances), ("errors", len(errors)),
                     ("skipped", len(results) - len(mine))):
            rows[c].append(v)
    return {c: np.array(v) for c, v in rows.items()}


SHARED = ("images", "sam", "uosam", "data", "runtime")  # what the outputs of one pass must agree on


def run_refine(cfg: RefineConfig, log: Callable[[str], None] = print) -> LabelSummary:
    """Refine (or go on refining) the coarse labels ``cfg.labels`` of ``cfg.images`` into ``cfg.out``."""
    return run_refine_many([cfg], log)[0]


def run_refine_many(cfgs: Sequence[RefineConfig], log: Callable[[str], None] = print) -> list[LabelSummary]:
    """Refine several coarse label sets of the same images in one pass (each config's ``labels`` →
    its ``out`` and ``lro_out``), each output resumable and complete on its own: an image already
    refined into one output is refined again only for the others.

    Raises:
        ValueError: the configs differ in what the pass shares (``SHARED``); as ``plan_refine``.
    """
    import ray.data

    from .label_outputs import write_label_outputs

    start = time.time()
    if not cfgs:
        raise ValueError("refine: no coarse labels to refine")
    for name in SHARED:
        if len({repr(getattr(c, name)) for c in cfgs}) > 1:
            raise ValueError(f"refine: label sets refined in one pass must share {name}; they differ")
    plans = [plan_refine(c) for c in cfgs]
    cfg = cfgs[0]
    common = set.intersection(*[p.done for p in plans])
    listing = plans[0].listing if len(plans) == 1 else list_source(
        parse_source(cfg.images), cfg.data, common, rows_per_unit=cfg.runtime.batch_size)
    for plan in plans:
        update_manifest(Path(plan.cfg.out).parent, STAGE, status="running", started=utc_now(),
                        fingerprint=plan.fingerprint, models={plan.sam.spec.name: plan.sam.fingerprint()},
                        method=plan.provenance, config=plan.cfg.model_dump(mode="json"), total_images=plan.listing.total)
    what = "LRO + GRO" if cfg.uosam.use_global else "LRO only"
    sources = ", ".join(str(c.labels) for c in cfgs)
    log(f"refine: {listing.total} images in {cfg.images}; {listing.total - listing.pending} already refined, "
        f"{listing.pending} to refine from {sources} ({len(plans[0].classes)} classes"
        f"{'' if len(plans) == 1 else ' in the first'}) with UO-SAM ({what}, {plans[0].sam.spec.name})")
    counts = [{"images": 0, "instances": 0, "errors": 0} for _ in plans]
    for plan, c in zip(plans, counts):
        if plan.listing.errors:
            write_errors(Path(plan.cfg.out), [{**e, "stage": "list"} for e in plan.listing.errors], plan.fingerprint, {})
            c["errors"] += len(plan.listing.errors)
    if listing.pending:
        resources = init_ray(cfg.runtime.address, log)
        quiet_ray_data()
        pool = plan_model_pool(cfg.runtime, resources)
        inputs = [RefineInput(str(p.cfg.labels), str(p.cfg.classes_file) if p.cfg.classes_file else None,
                              p.cfg.lro_out is not None, frozenset(p.done - common)) for p in plans]
        targets = [{"labels_dir": str(p.cfg.out), "lro_dir": str(p.cfg.lro_out) if p.cfg.lro_out is not None else None,
                    "classes": p.classes, "fingerprint": p.fingerprint, "provenance": p.provenance,
                    "overlays": p.cfg.overlays} for p in plans]
        ds = read_images(listing, cfg.data, plans[0].sam.spec.input_size, cfg.runtime.batch_size, pool)
        ds = ds.map_batches(
            RefineStage,
            fn_constructor_kwargs={"sam": plans[0].sam, "inputs": inputs, "settings": cfg.uosam,
                                   "sam_settings": cfg.sam, "runtime": cfg.runtime, "device": pool.device,
                                   "torch_threads": pool.torch_threads},
            batch_size=cfg.runtime.batch_size, num_cpus=pool.num_cpus, num_gpus=pool.num_gpus, zero_copy_batch=True,
            compute=ray.data.ActorPoolStrategy(size=pool.size, max_tasks_in_flight_per_actor=4))
        ds = ds.map_batches(write_refine_batch, fn_kwargs={"targets": targets}, batch_size=cfg.runtime.shard_size,
                            compute=ray.data.TaskPoolStrategy(size=pool.write_tasks), num_cpus=pool.write_cpus)
        with Progress("refine", listing.pending, "images", log if cfg.runtime.progress else (lambda _l: None)) as progress:
            for row in rows_until_stalled(ds.iter_rows(), cfg.runtime.stall_timeout_s, "refine", log):
                c = counts[int(row["target"])]
                for key in c:
                    c[key] += int(row[key])
                if int(row["target"]) == 0:
                    progress.update(int(row["images"]) + int(row["errors"]) + int(row["skipped"]),
                                    instances=counts[0]["instances"], errors=counts[0]["errors"])
    summaries = []
    for plan, c in zip(plans, counts):
        out = Path(plan.cfg.out)
        if plan.cfg.lro_out is not None:
            write_label_outputs(Path(plan.cfg.lro_out), plan.classes, plan.fingerprint, plan.cfg.export)
        images_total, instances_total, exports = write_label_outputs(out, plan.classes, plan.fingerprint, plan.cfg.export)
        summaries.append(LabelSummary(str(out), plan.fingerprint, plan.already_done, c["images"], c["instances"],
                                      images_total, instances_total, time.time() - start, exports))
        complete = c["images"] + c["errors"] - len(plan.listing.errors) >= plan.listing.pending
        update_manifest(out.parent, STAGE, status="complete" if complete else "incomplete", finished=utc_now(),
                        images=images_total, instances=instances_total,
                        errors=len(read_column(out / "errors", "image_id")))
    first = counts[0]
    outs = ", ".join(s.out for s in summaries)
    log(f"refine: {first['images']} images refined ({first['instances']} instances), {first['errors']} errors, "
        f"{summaries[0].images_total} in {outs} ({summaries[0].seconds:.1f}s)")
    return summaries
