"""``usam-ray label --method fmbseg [--refined]``: images → read/decode (CPU tasks) → DINOv2 +
the alignment module (+ SAM's automatic masks when refined) on an actor pool → labels shards.

The labels directory is the same as U-SAM's (semantic PNGs, ``images/`` and ``instances/``
shards, COCO files, overlays; ``label_outputs`` merges them), with provenance ``fmbseg`` or
``fmbseg_refined`` on every instance. Like every image stage it checks what can fail before Ray
starts, skips images already labelled with the same fingerprint (an instance shard marks its
images done), and turns a failing image into a row of ``LABELS/errors``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..config import LabelConfig, LabelSettings, RuntimeConfig, SamConfig, stable_hash
from ..data.shards import (
    check_fingerprints, list_shards, read_column, remove_temp_files, shard_name, update_manifest, utc_now,
)
from ..data.sources import Listing, list_source, parse_source
from ..heads.checkpoint import HeadMismatchError, head_checkpoint, head_info
from ..models.registry import ResolvedModel, models_dir_from_env, resolve, resolve_default, weights_fingerprint
from ..models.sam import spec_with_arch
from ..progress import Progress
from ..runtime import init_ray, plan_model_pool, quiet_ray_data, rows_until_stalled
from .label import STAGE, LabelSummary
from .label_stage import LabelledImage, write_labelled_shard
from .stages import error_rows, object_column, read_images, require_columns, write_errors


@dataclass
class FmbsegLabelPlan:
    """Everything resolved on the driver before Ray starts."""

    cfg: LabelConfig
    head_path: Path
    classes: list[str]
    dino: ResolvedModel
    sam: ResolvedModel
    fingerprint: str
    provenance: str
    listing: Listing
    already_done: int
    base_fingerprint: str = ""  # of the base labels written to cfg.base_out
    skip: frozenset[str] = frozenset()  # in cfg.out already (labelled or failed), redone for cfg.base_out only
    skip_base: frozenset[str] = frozenset()  # in cfg.base_out already, redone for cfg.out only


def labelled_ids(labels_dir: Path) -> set[str]:
    """Image ids already labelled: the labelled-images rows of every shard whose instance shard
    (written last) exists."""
    import pyarrow.parquet as pq

    done = {p.name for p in list_shards(labels_dir / "instances")}
    return {r for p in list_shards(labels_dir / "images") if p.name in done
            for r in pq.read_table(p, columns=["file_name"]).column("file_name").to_pylist()}


def plan_label_fmbseg(cfg: LabelConfig, classes: Optional[list[str]] = None) -> FmbsegLabelPlan:
    """Resolve the alignment head, its DINOv2 (the one its features came from), SAM (refined) and
    the source; raise before Ray starts.

    Raises:
        FileNotFoundError, HeadMismatchError, SourceError, ModelNotFoundError, StageConflictError.
    """
    if cfg.images is None or cfg.head is None or cfg.out is None:
        raise ValueError("label --method fmbseg needs --images, --head (RUN/align) and --out")
    head_path = head_checkpoint(Path(cfg.head), cfg.checkpoint, "train align")
    info = head_info(head_path)
    if info.get("method") != "fmbseg":
        raise HeadMismatchError(f"head {head_path} is not an FMbSeg alignment module (train one with "
                                "`usam-ray train align`, or label with --method usam)")
    if classes is not None and list(classes) != list(info["classes"]):
        raise HeadMismatchError(f"head {head_path} predicts {info['classes']}, not the requested {classes}")
    models_dir = models_dir_from_env(cfg.runtime.models_dir)
    trained = info["embeddings"]["models"]
    dino_name = next((k for k in trained if k.startswith("dino:")), None)
    if dino_name is None:
        raise HeadMismatchError(f"head {head_path} does not say which DINOv2 its features came from")
    dino = resolve(dino_name, models_dir)
    if dino.fingerprint() != trained[dino_name]:
        raise HeadMismatchError(f"head {head_path} was trained on features of {dino_name} with weights "
                                f"{trained[dino_name]}, but {dino.location} has weights {dino.fingerprint()}")
    sam = resolve_default("sam", cfg.sam.model, models_dir, cfg.sam.checkpoint)
    sam = ResolvedModel(spec_with_arch(sam), sam.location, sam.local)
    if cfg.base_out is not None and not cfg.refined:
        raise ValueError("label: base_out (--base-out) needs refined labels (--refined); the base labels are --out")

    def fingerprint_of(refined: bool) -> str:
        return stable_hash({"stage": "label_fmbseg", "head": weights_fingerprint(head_path),
                            "refined": refined, "label": cfg.label.model_dump(), "dino": dino.fingerprint(),
                            "sam": sam.fingerprint() if refined else "",
                            "sam_settings": cfg.sam.model_dump(mode="json", exclude={"model", "checkpoint", "compile"})
                            if refined else {}, "data": cfg.data.model_dump(mode="json", exclude={"extensions"})})

    # the base labels written beside refined ones carry a base run's fingerprint: either run resumes the other
    fingerprint, base_fingerprint = fingerprint_of(cfg.refined), fingerprint_of(False)
    outs = [(Path(cfg.out), fingerprint)] + ([(Path(cfg.base_out), base_fingerprint)] if cfg.base_out is not None else [])
    dones = []  # per output, the images it has (labelled or an error row)
    for out, fp in outs:
        remove_temp_files(out)
        check_fingerprints([out / "instances", out / "errors"], fp, STAGE)
        if cfg.retry_errors:
            for shard in list_shards(out / "errors"):
                shard.unlink()
        dones.append(labelled_ids(out) | set(read_column(out / "errors", "image_id")))
    done = set.intersection(*dones)
    listing = list_source(parse_source(cfg.images), cfg.data, done, rows_per_unit=cfg.runtime.batch_size)
    return FmbsegLabelPlan(cfg, head_path, list(info["classes"]), dino, sam, fingerprint,
                           "fmbseg_refined" if cfg.refined else "fmbseg", listing, listing.total - listing.pending,
                           base_fingerprint, frozenset(dones[0] - done), frozenset(dones[-1] - done))


class FmbsegLabelStage:
    """Model stage: FMbSeg labels of decoded images (DINOv2 → alignment module → nearest text
    prototype; with ``refined``, SAM's automatic masks vote).

    Args:
        head_path (str): alignment head checkpoint.
        dino, sam (ResolvedModel): DINOv2, and SAM (loaded only when ``refined``).
        refined (bool): refine with SAM's automatic masks.
        settings (LabelSettings), sam_settings (SamConfig), runtime (RuntimeConfig): as their sections.
        device (str): torch device; torch_threads (int): intra-op threads (0: torch's default).
        base_too (bool): with ``refined``, also return the base labels (column ``base``).

    Output columns: ``image_id``, ``path``, the error columns, ``row`` and ``base`` (bytes: the
    pickled ``LabelledImage``, b"" on error or when not asked for).
    """

    INPUT = ("image_id", "path", "height", "width", "input_h", "input_w", "image", "error_type", "error_stage",
             "message")

    def __init__(self, head_path: str, dino: ResolvedModel, sam: ResolvedModel, refined: bool,
                 settings: LabelSettings, sam_settings: SamConfig, runtime: RuntimeConfig | None = None,
                 device: str = "cpu", torch_threads: int = 0, base_too: bool = False) -> None:
        import torch

        from ..heads.checkpoint import load_head
        from ..methods.sam_embed import SamMaskEmbedder
        from ..models.dino import load_dino
        from ..models.sam import load_sam

        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.torch = torch
        self.device = torch.device(device)
        self.head, ckpt = load_head(Path(head_path))
        self.head.to(self.device)
        self.prototypes = torch.as_tensor(np.asarray(ckpt["prototypes"], np.float32), device=self.device)
        self.embedder = SamMaskEmbedder(load_sam(sam), sam_settings, runtime, device) if refined else None
        self.dino, self.dino_spec = load_dino(dino), dino.spec
        self.dino.model.to(self.device)
        self.settings = settings
        self.provenance = "fmbseg_refined" if refined else "fmbseg"
        self.base_too = base_too and refined

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import pickle

        from ..methods.fmbseg import dino_features, label_image_variants

        require_columns("label fmbseg", batch, self.INPUT)
        n = len(batch["image_id"])
        out = {k: batch[k] for k in ("image_id", "path")}
        for k in ("error_type", "error_stage", "message"):
            out[k] = np.array(batch[k], dtype=object)
        rows, bases = [b""] * n, [b""] * n
        ok = [i for i in range(n) if not batch["error_type"][i]]
        sizes = {i: (int(batch["input_h"][i]), int(batch["input_w"][i])) for i in ok}
        originals = {i: (int(batch["height"][i]), int(batch["width"][i])) for i in ok}
        try:
            # the same resize and normalisation as the features Stage 2 trained on
            feats = dino_features(self.dino, self.dino_spec, [batch["image"][i][:sizes[i][0], :sizes[i][1]] for i in ok],
                                  self.device) if ok else []
            autos = dict(zip(ok, self._automatic(batch, ok, sizes, originals)))
        except Exception as exc:  # a batch-wide failure: every image of it becomes an error row
            for i in ok:
                out["error_type"][i], out["error_stage"][i] = type(exc).__name__, "label"
                out["message"][i] = f"{batch['path'][i]}: FMbSeg labelling failed: {exc}"
            ok = []
        for k, i in enumerate(ok):
            image_id, path = str(batch["image_id"][i]), str(batch["path"][i])
            try:
                labels = label_image_variants(self.head, self.prototypes, feats[k], *originals[i],
                                              [autos.get(i)] + ([None] if self.base_too else []), self.settings)
            except Exception as exc:
                out["error_type"][i], out["error_stage"][i] = type(exc).__name__, "label"
                out["message"][i] = f"{batch['path'][i]}: FMbSeg labelling failed: {exc}"
                continue
            rows[i] = pickle.dumps(LabelledImage(image_id, path, *labels[0]))
            if self.base_too:
                bases[i] = pickle.dumps(LabelledImage(image_id, path, *labels[1]))
        out["row"], out["base"] = object_column(rows), object_column(bases)
        return out

    def _automatic(self, batch: dict, ok: list[int], sizes: dict, originals: dict) -> list:
        """SAM automatic masks of the batch's good images (refined), else nothing."""
        if self.embedder is None or not ok:
            return []
        with self.torch.inference_mode():
            padded = batch["image"][ok]
            return self.embedder.embed_prepared(padded, [sizes[i] for i in ok], [originals[i] for i in ok])


def write_label_batch(batch: dict[str, np.ndarray], labels_dir: str, classes: list[str], fingerprint: str,
                      provenance: str, overlays: bool, base: Optional[dict] = None) -> dict[str, np.ndarray]:
    """Sink task: one batch (``row``: pickled ``LabelledImage``, or the error columns) →
    ``write_labelled_and_errors``. With ``base`` (``dir``, ``fingerprint``, ``skip``: ids that
    output has already; ``skip_main``: ids ``labels_dir`` has already), the ``base`` column's labels
    shard there first (the main instance shard marks the batch done). One summary row out
    (``images`` and ``errors`` of the batch, ``instances`` written to ``labels_dir``)."""
    import pickle

    failed = np.array([bool(e) for e in batch["error_type"]], dtype=bool)

    def rows(skip: frozenset, column: str) -> tuple[list, list[dict]]:
        keep = [i for i in range(len(failed)) if batch["image_id"][i] not in skip]
        return ([pickle.loads(batch[column][i]) for i in keep if not failed[i]],
                error_rows(batch, [i for i in keep if failed[i]]))

    skip_main: frozenset = frozenset()
    if base is not None:  # an error is an error of both outputs
        skip_main = base["skip_main"]
        write_labelled_and_errors(Path(base["dir"]), *rows(base["skip"], "base"), classes, base["fingerprint"],
                                  "fmbseg", False)
    images, errors = rows(skip_main, "row")
    instances = write_labelled_and_errors(Path(labels_dir), images, errors, classes, fingerprint, provenance, overlays)
    return {"images": np.array([int((~failed).sum())]), "instances": np.array([instances]),
            "errors": np.array([int(failed.sum())])}


def write_labelled_and_errors(labels_dir: Path, images: list[LabelledImage], errors: list[dict], classes: list[str],
                              fingerprint: str, provenance: str, overlays: bool) -> int:
    """A labels shard of ``images`` (``write_labelled_shard``) and an errors shard of ``errors``
    (rows of ``image_id``, ``path``, ``stage``, ``error_type``, ``message``), each when not empty.
    Returns the number of instances written."""
    instances = 0
    if images:
        name = shard_name(im.image_id for im in images)
        instances = write_labelled_shard(labels_dir, name, images, classes, fingerprint, provenance, overlays)
    if errors:
        write_errors(labels_dir, errors, fingerprint, {})
    return instances


def run_label_fmbseg(cfg: LabelConfig, log: Callable[[str], None] = print,
                     classes: Optional[list[str]] = None) -> LabelSummary:
    """Label (or go on labelling) ``cfg.images`` with the FMbSeg alignment head in ``cfg.head``."""
    import ray.data

    from .label_outputs import write_label_outputs

    start = time.time()
    plan = plan_label_fmbseg(cfg, classes)
    out, listing = Path(cfg.out), plan.listing
    update_manifest(out.parent, STAGE, status="running", started=utc_now(), fingerprint=plan.fingerprint,
                    head=str(plan.head_path), method=plan.provenance, config=cfg.model_dump(mode="json"),
                    total_images=listing.total)
    log(f"label: {listing.total} images in {cfg.images}; {plan.already_done} already labelled, {listing.pending} to "
        f"label with {plan.head_path} ({len(plan.classes)} classes, DINOv2 {plan.dino.spec.name}"
        f"{', refined by ' + plan.sam.spec.name + ' automatic masks' if cfg.refined else ''})")
    errors = images = instances = 0
    if listing.errors:
        write_errors(out, [{**e, "stage": "list"} for e in listing.errors], plan.fingerprint, {})
        if cfg.base_out is not None:
            write_errors(Path(cfg.base_out), [{**e, "stage": "list"} for e in listing.errors], plan.base_fingerprint, {})
        errors += len(listing.errors)
    if listing.pending:
        resources = init_ray(cfg.runtime.address, log)
        quiet_ray_data()
        pool = plan_model_pool(cfg.runtime, resources)
        ds = read_images(listing, cfg.data, plan.sam.spec.input_size, cfg.runtime.batch_size, pool)
        ds = ds.map_batches(
            FmbsegLabelStage,
            fn_constructor_kwargs={"head_path": str(plan.head_path), "dino": plan.dino, "sam": plan.sam,
                                   "refined": cfg.refined, "settings": cfg.label, "sam_settings": cfg.sam,
                                   "runtime": cfg.runtime, "device": pool.device, "torch_threads": pool.torch_threads,
                                   "base_too": cfg.base_out is not None},
            batch_size=cfg.runtime.batch_size, num_cpus=pool.num_cpus, num_gpus=pool.num_gpus, zero_copy_batch=True,
            compute=ray.data.ActorPoolStrategy(size=pool.size, max_tasks_in_flight_per_actor=4))
        ds = ds.map_batches(
            write_label_batch, fn_kwargs={"labels_dir": str(out), "classes": plan.classes, "fingerprint": plan.fingerprint,
                                          "provenance": plan.provenance, "overlays": cfg.overlays,
                                          "base": None if cfg.base_out is None else {
                                              "dir": str(cfg.base_out), "fingerprint": plan.base_fingerprint,
                                              "skip": plan.skip_base, "skip_main": plan.skip}},
            batch_size=cfg.runtime.shard_size, compute=ray.data.TaskPoolStrategy(size=pool.write_tasks),
            num_cpus=pool.write_cpus)
        with Progress("label", listing.pending, "images", log if cfg.runtime.progress else (lambda _l: None)) as progress:
            for row in rows_until_stalled(ds.iter_rows(), cfg.runtime.stall_timeout_s, "label", log):
                images += int(row["images"])
                instances += int(row["instances"])
                errors += int(row["errors"])
                progress.update(int(row["images"]) + int(row["errors"]), instances=instances, errors=errors)
    if cfg.base_out is not None:
        write_label_outputs(Path(cfg.base_out), plan.classes, plan.base_fingerprint, cfg.export)
    images_total, instances_total, exports = write_label_outputs(out, plan.classes, plan.fingerprint, cfg.export)
    summary = LabelSummary(str(out), plan.fingerprint, plan.already_done, images, instances, images_total,
                           instances_total, time.time() - start, exports)
    complete = images + errors - len(listing.errors) >= listing.pending
    update_manifest(out.parent, STAGE, status="complete" if complete else "incomplete", finished=utc_now(),
                    images=images_total, instances=instances_total, errors=len(read_column(out / "errors", "image_id")))
    return summary
