"""The pseudo pipeline (FMbSeg Stage 1): images → read/decode (CPU tasks) → CLIP + SAM + DINOv2
(actor pool: each model loaded once per actor, each image encoded once for all classes) →
pseudo-label shards (``RUN/pseudo``) and DINOv2 feature shards (``RUN/features``, same names).

Like embed, it checks everything that can fail before Ray starts, skips images already written
with the same fingerprint (a re-run continues), turns a failing image into an error row, and keeps
``RUN/run.json`` current.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..config import FmbsegSettings, PseudoConfig, RuntimeConfig, SamConfig, pseudo_fingerprint
from ..data.schema import PSEUDO_SCHEMA, features_table, shard_metadata
from ..data.shards import (
    check_fingerprints, count_rows, list_shards, read_column, remove_temp_files, shard_name, update_manifest, utc_now,
    write_shard,
)
from ..data.sources import Listing, list_source, parse_source
from ..models.registry import ResolvedModel, models_dir_from_env, resolve_default
from ..models.sam import spec_with_arch
from ..progress import Progress
from ..runtime import init_ray, plan_model_pool, quiet_ray_data, rows_until_stalled
from ..types import Ontology
from .stages import error_rows, object_column, read_images, require_columns, write_errors

STAGE = "pseudo"
FEATURES = "features"
PROVENANCE = {11: "fmbseg_stage1_1", 12: "fmbseg_stage1_2"}


@dataclass
class PseudoPlan:
    """Everything resolved on the driver before Ray starts."""

    cfg: PseudoConfig
    classes: list[str]
    stage_dir: Path
    features_dir: Path
    sam: ResolvedModel
    clip: ResolvedModel
    dino: ResolvedModel
    fingerprint: str
    models: dict[str, str]
    listing: Listing
    already_done: int


@dataclass
class PseudoSummary:
    """What a pseudo run did (as EmbedSummary), plus the pseudo masks written by this run."""

    out: str
    fingerprint: str
    total: int
    already_done: int
    labelled: int
    masks: int
    errors: int
    rows_total: int
    errors_total: int
    seconds: float


def plan_pseudo(cfg: PseudoConfig) -> PseudoPlan:
    """Resolve classes, source, the three models and resume state; raise before Ray work starts.

    Raises:
        SourceError, ModelNotFoundError, CheckpointError, StageConflictError, ValueError.
    """
    if cfg.images is None or cfg.out is None or not cfg.classes:
        raise ValueError("pseudo needs an image source (--images), classes (--classes) and a run directory (--out)")
    classes = list(Ontology.from_names(cfg.classes).classes)
    source = parse_source(cfg.images)
    models_dir = models_dir_from_env(cfg.runtime.models_dir)
    sam = resolve_default("sam", cfg.sam.model, models_dir, cfg.sam.checkpoint)
    sam = ResolvedModel(spec_with_arch(sam), sam.location, sam.local)
    clip = resolve_default("clip", cfg.clip_model, models_dir)
    dino = resolve_default("dino", cfg.dino_model, models_dir)
    models = {m.spec.name: m.fingerprint() for m in (sam, clip, dino)}
    fingerprint = pseudo_fingerprint(cfg, classes, models)
    stage_dir = Path(cfg.out)
    features_dir = stage_dir.parent / FEATURES
    for d in (stage_dir, features_dir):
        remove_temp_files(d)
    check_fingerprints([stage_dir, stage_dir / "errors", features_dir], fingerprint, STAGE)
    if cfg.retry_errors:
        for shard in list_shards(stage_dir / "errors"):
            shard.unlink()
    # an image is done when its features shard exists: it is written after its pseudo shard
    done = set(read_column(features_dir, "image_id")) | set(read_column(stage_dir / "errors", "image_id"))
    listing = list_source(source, cfg.data, done, rows_per_unit=cfg.runtime.batch_size)
    return PseudoPlan(cfg, classes, stage_dir, features_dir, sam, clip, dino, fingerprint, models, listing,
                      listing.total - listing.pending)


class PseudoStage:
    """Model stage: Stage 1 pseudo labels and DINOv2 features of decoded images.

    Args:
        sam, clip, dino (ResolvedModel): the models to load (once per actor).
        classes (list[str]): the vocabulary.
        settings (FmbsegSettings), sam_settings (SamConfig), runtime (RuntimeConfig): as their sections.
        device (str): torch device.
        torch_threads (int): intra-op threads (0 keeps torch's default).

    Output columns: ``image_id``, ``path``, ``labels``, ``height``, ``width``, the error columns,
    ``row`` (bytes: the image's pickled pseudo-shard row, b"" on error) and ``features``
    (B, g², D) float16 (zeros on error).
    """

    INPUT = ("image_id", "path", "labels", "height", "width", "input_h", "input_w", "image", "error_type",
             "error_stage", "message")

    def __init__(self, sam: ResolvedModel, clip: ResolvedModel, dino: ResolvedModel, classes: list[str],
                 settings: FmbsegSettings, sam_settings: SamConfig, runtime: RuntimeConfig | None = None,
                 device: str = "cpu", torch_threads: int = 0) -> None:
        import torch

        from ..methods.fmbseg import FmbsegModels
        from ..methods.sam_embed import SamMaskEmbedder
        from ..models.clip import load_clip
        from ..models.dino import load_dino
        from ..models.sam import load_sam

        if torch_threads:
            torch.set_num_threads(torch_threads)
        embedder = SamMaskEmbedder(load_sam(sam), sam_settings, runtime, device)
        bundle = load_dino(dino)
        self.models = FmbsegModels(load_clip(clip), clip.spec, embedder, bundle, dino.spec, classes, settings, device)
        self.patches = (dino.spec.input_size // bundle.patch_size) ** 2
        self.dim = int(bundle.model.config.hidden_size)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import pickle

        from ..methods.fmbseg import ImageInput, pseudo_label

        require_columns("pseudo", batch, self.INPUT)
        n = len(batch["image_id"])
        out = {k: batch[k] for k in ("image_id", "path", "labels", "height", "width")}
        for k in ("error_type", "error_stage", "message"):
            out[k] = np.array(batch[k], dtype=object)
        rows = [b""] * n
        feats = np.zeros((n, self.patches, self.dim), np.float16)
        for i in [i for i in range(n) if not batch["error_type"][i]]:
            h, w = int(batch["input_h"][i]), int(batch["input_w"][i])
            image = ImageInput(batch["image"][i][:h, :w], (int(batch["height"][i]), int(batch["width"][i])),
                               [str(x) for x in batch["labels"][i]] or None)
            try:  # one image at a time: CLIP's crops and SAM's prompts are per image anyway
                (ms, classes), = pseudo_label(self.models, batch["image"][i:i + 1], [image], [(h, w)])
                feats[i] = self.models.dino_features([image.visible])[0].cpu().numpy()
            except Exception as exc:
                out["error_type"][i], out["error_stage"][i] = type(exc).__name__, "pseudo"
                out["message"][i] = f"{batch['path'][i]}: FMbSeg Stage 1 failed: {exc}"
                continue
            rows[i] = pickle.dumps(pseudo_row(batch, i, ms, [self.models.classes[c] for c in classes]))
        # one bytes column and one dense tensor: Arrow-friendly whatever a batch holds
        out["row"], out["features"] = object_column(rows), feats
        return out


def pseudo_row(batch: dict[str, np.ndarray], i: int, ms, detected: list[str]) -> dict:
    """Image ``i``'s row of the pseudo shard (``PSEUDO_SCHEMA``) from its Stage 1 MaskSet."""
    stage = [int(s) for s in ms.data["stage"]]
    return {"image_id": str(batch["image_id"][i]), "path": str(batch["path"][i]),
            "labels": [str(x) for x in batch["labels"][i]], "height": int(batch["height"][i]),
            "width": int(batch["width"][i]), "detected": detected,
            "class_id": [int(c) + 1 for c in ms.class_ids], "stage": [f"{s // 10}.{s % 10}" for s in stage],
            "score": [float(x) for x in ms.scores], "boxes": [[float(v) for v in b] for b in ms.boxes],
            "mask_counts": [r["counts"] for r in ms.masks], "provenance": [PROVENANCE[s] for s in stage]}


def write_pseudo_batch(batch: dict[str, np.ndarray], stage_dir: str, features_dir: str, fingerprint: str, models: dict[str, str]) -> dict[str, np.ndarray]:
    """Sink task: one batch → a pseudo shard, then the features shard of the same name (the
    done-marker), then an errors shard; one summary row out (``shard``, ``rows``, ``masks``, ``errors``)."""
    import pickle

    import pyarrow as pa

    failed = np.array([bool(e) for e in batch["error_type"]], dtype=bool)
    ok, bad = np.flatnonzero(~failed), np.flatnonzero(failed)
    name, masks = "", 0
    if len(ok):
        name = shard_name(str(batch["image_id"][i]) for i in ok)
        rows = [pickle.loads(batch["row"][i]) for i in ok]
        masks = sum(len(r["class_id"]) for r in rows)
        write_shard(pa.Table.from_pylist(rows, schema=PSEUDO_SCHEMA), Path(stage_dir) / name,
                    shard_metadata("pseudo", fingerprint, models))
        write_shard(features_table([str(batch["image_id"][i]) for i in ok], [batch["features"][i] for i in ok]),
                    Path(features_dir) / name, shard_metadata("features", fingerprint, models))
    if len(bad):
        write_errors(Path(stage_dir), error_rows(batch, bad), fingerprint, models)
    return {"shard": object_column([name]), "rows": np.array([len(ok)]), "masks": np.array([masks]),
            "errors": np.array([len(bad)])}


def build_pseudo_dataset(plan: PseudoPlan, resources):
    """The lazy Ray Data graph of a pseudo run (units → read → CLIP + SAM + DINOv2 → shard writes)."""
    import ray.data

    cfg = plan.cfg
    pool = plan_model_pool(cfg.runtime, resources)
    ds = read_images(plan.listing, cfg.data, plan.sam.spec.input_size, cfg.runtime.batch_size, pool)
    ds = ds.map_batches(
        PseudoStage,
        fn_constructor_kwargs={"sam": plan.sam, "clip": plan.clip, "dino": plan.dino, "classes": plan.classes,
                               "settings": cfg.fmbseg, "sam_settings": cfg.sam, "runtime": cfg.runtime,
                               "device": pool.device, "torch_threads": pool.torch_threads},
        batch_size=cfg.runtime.batch_size, num_cpus=pool.num_cpus, num_gpus=pool.num_gpus, zero_copy_batch=True,
        compute=ray.data.ActorPoolStrategy(size=pool.size, max_tasks_in_flight_per_actor=4),
    )
    return ds.map_batches(
        write_pseudo_batch,
        fn_kwargs={"stage_dir": str(plan.stage_dir), "features_dir": str(plan.features_dir),
                   "fingerprint": plan.fingerprint, "models": plan.models},
        batch_size=cfg.runtime.shard_size, compute=ray.data.TaskPoolStrategy(size=pool.write_tasks),
        num_cpus=pool.write_cpus,
    )


def run_pseudo(cfg: PseudoConfig, log: Callable[[str], None] = print) -> PseudoSummary:
    """Run (or resume) FMbSeg Stage 1 on ``cfg.images``; return its summary."""
    start = time.time()
    plan = plan_pseudo(cfg)
    listing, run_dir = plan.listing, plan.stage_dir.parent
    update_manifest(run_dir, STAGE, status="running", started=utc_now(), fingerprint=plan.fingerprint,
                    models=plan.models, classes=plan.classes, config=cfg.model_dump(mode="json"),
                    source=str(cfg.images), total_images=listing.total)
    errors = labelled = masks = 0
    if listing.errors:
        write_errors(plan.stage_dir, [{**e, "stage": "list"} for e in listing.errors], plan.fingerprint, plan.models)
        errors += len(listing.errors)
    log(f"pseudo: {listing.total} images in {cfg.images}; {plan.already_done} already done, {listing.pending} to "
        f"label with {plan.clip.spec.name} + {plan.sam.spec.name}, features from {plan.dino.spec.name}; "
        f"{len(plan.classes)} classes; fingerprint {plan.fingerprint}")
    if listing.pending:
        resources = init_ray(cfg.runtime.address, log)
        quiet_ray_data()
        ds = build_pseudo_dataset(plan, resources)
        show = log if cfg.runtime.progress else (lambda _l: None)
        with Progress("pseudo", listing.pending, "images", show) as progress:
            for row in rows_until_stalled(ds.iter_rows(), cfg.runtime.stall_timeout_s, "pseudo", log):
                labelled += int(row["rows"])
                masks += int(row["masks"])
                errors += int(row["errors"])
                update_manifest(run_dir, STAGE, labelled_this_run=labelled, errors_this_run=errors)
                progress.update(int(row["rows"]) + int(row["errors"]), masks=masks, errors=errors)
    rows_total = count_rows(plan.features_dir)
    errors_total = count_rows(plan.stage_dir / "errors")
    summary = PseudoSummary(str(plan.stage_dir), plan.fingerprint, listing.total, plan.already_done, labelled,
                            masks, errors, rows_total, errors_total, time.time() - start)
    complete = labelled + errors - len(listing.errors) >= listing.pending
    update_manifest(run_dir, STAGE, status="complete" if complete else "incomplete", finished=utc_now(),
                    shards=len(list_shards(plan.features_dir)), rows=rows_total, errors=errors_total,
                    summary=asdict(summary))
    return summary


def write_stage1_labels(pseudo_dir: Path, out: Path, classes: list[str], fraction: float, seed: int) -> tuple[int, int]:
    """Stage 1's pseudo labels as a labels directory (to score them like any method): per image the
    pseudo label map of its 1.1 masks and the seeded ``fraction`` of its 1.2 masks (what Stage 2
    trains on; ``fraction`` 0 → 1.1 only) as the semantic PNG, the kept masks as instances
    (score = SAM's predicted IoU, provenance ``fmbseg_stage1``; the pseudo shards keep each mask's
    ``fmbseg_stage1_1``/``_2``).

    Returns:
        (images, instances) in ``out``.
    """
    import pyarrow.parquet as pq

    from ..data.schema import pseudo_masksets
    from ..methods.fmbseg import pseudo_label_map, training_masks
    from ..types import MaskSet
    from .label_outputs import write_label_outputs
    from .label_stage import LabelledImage, write_labelled_shard

    fingerprint = f"stage1-{fraction}-{seed}"
    for shard in list_shards(Path(pseudo_dir)):
        table = pq.read_table(shard)
        images = []
        for image_id, path, h, w, ms in zip(*(table.column(c).to_pylist() for c in ("image_id", "path", "height",
                                                                                   "width")), pseudo_masksets(table)):
            keep = training_masks(image_id, ms.data["stage"], fraction, seed)
            idx = np.flatnonzero(keep)
            inst = MaskSet([ms.masks[i] for i in idx], ms.boxes[idx], ms.scores[idx], ms.class_ids[idx])
            images.append(LabelledImage(image_id, path, inst, pseudo_label_map(ms, keep, h, w)))
        write_labelled_shard(Path(out), shard.name, images, classes, fingerprint, "fmbseg_stage1")
    images_total, instances_total, _ = write_label_outputs(Path(out), classes, fingerprint)
    return images_total, instances_total
