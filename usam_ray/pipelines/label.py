"""The label pipeline: embeddings → head → threshold → mask NMS → instances and semantic maps.

``run_label`` labels images (embedding them first into ``RUN/embed``, resumable) or stored
embeddings (``--from-embeddings``: a new head or new thresholds cost seconds, not GPU hours).
Each embedding shard becomes one Ray Data task on a head actor (``label_stage``), which writes
the shard's semantic PNGs and (optional) overlays, its labelled-images shard, then its instance
shard, atomically; a re-run skips shards whose instance shard exists. At the end
``label_outputs.write_label_outputs`` merges the shards into ``coco_dataset.json``,
``coco_results.json``, ``classes.json`` and the ``--format`` exports.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from ..config import EmbedConfig, LabelConfig, LabelSettings, stable_hash
from ..data.shards import (
    check_fingerprints, count_rows, list_shards, read_shard_meta, remove_temp_files, update_manifest, utc_now,
)
from ..heads.checkpoint import HeadMismatchError, check_head, head_checkpoint, head_info
from ..models.registry import weights_fingerprint
from .label_stage import LabelShardStage, SamClipShardStage

STAGE = "label"


@dataclass
class LabelSummary:
    """What a label run did: images and instances labelled now, totals, where things are."""

    out: str
    fingerprint: str
    shards_done_before: int
    images: int
    instances: int
    images_total: int
    instances_total: int
    seconds: float
    exports: list[str] = field(default_factory=list)


def run_label(cfg: LabelConfig, log: Callable[[str], None] = print, classes: Optional[list[str]] = None) -> LabelSummary:
    """Label ``cfg.images`` (embedding them first) or ``cfg.embeddings`` with the head in ``cfg.head``."""
    from .embed import run_embed

    start = time.time()
    if cfg.head is None or cfg.out is None:
        raise ValueError("label needs --head and --out")
    head_path = head_checkpoint(Path(cfg.head), cfg.checkpoint, "train usam")
    ckpt = head_info(head_path)  # classes and embeddings, from head.json (no torch here)
    if ckpt["method"] != "usam":
        raise HeadMismatchError(f"head {head_path} is an FMbSeg alignment module: label with --method fmbseg")
    out = Path(cfg.out)
    if cfg.embeddings is not None:
        embed_dir = Path(cfg.embeddings)
    elif cfg.images is not None:
        embed_dir = out.parent / "embed"
        ecfg = EmbedConfig(images=cfg.images, out=out.parent, sam=cfg.sam, data=cfg.data, runtime=cfg.runtime)
        run_embed(ecfg, log=log)
    else:
        raise ValueError("label needs --images or --from-embeddings")
    shards = list_shards(embed_dir)
    if not shards:
        raise FileNotFoundError(f"no embedding shards in {embed_dir}")
    meta = read_shard_meta(shards[0])
    embed_models = meta.models
    check_head(ckpt, embed_models, embed_dir, head_path, classes)
    settings = cfg.label
    fingerprint = stable_hash({"stage": STAGE, "head": weights_fingerprint(head_path), "settings": cfg.label.model_dump(),
                               "embed": meta.fingerprint or ""})
    log(f"label: head {head_path} ({len(ckpt['classes'])} classes {ckpt['classes']})")
    update_manifest(out.parent, STAGE, status="running", started=utc_now(), fingerprint=fingerprint,
                    head=str(head_path), config=cfg.model_dump(mode="json"), total_images=count_rows(embed_dir))
    kwargs = {"head_path": str(head_path), "labels_dir": str(out), "settings": settings, "fingerprint": fingerprint,
              "overlays": cfg.overlays}
    summary = label_shards(LabelShardStage, kwargs, shards, out, ckpt["classes"], fingerprint, cfg.runtime, log,
                           cfg.export)
    summary.seconds = time.time() - start
    complete = summary.images_total >= count_rows(embed_dir)  # every embedded image labelled
    update_manifest(out.parent, STAGE, status="complete" if complete else "incomplete", finished=utc_now(),
                    images=summary.images_total, instances=summary.instances_total)
    return summary


def label_shards(stage_cls, kwargs: dict, shards: list[Path], out: Path, classes: list[str], fingerprint: str,
                 runtime, log: Callable[[str], None], export=None) -> LabelSummary:
    """Run ``stage_cls`` over the embedding shards not yet labelled in ``out``; merge the outputs.

    Raises:
        StageConflictError: ``out`` holds labels of another fingerprint.
    """
    import pyarrow.parquet as pq
    import ray.data

    from ..progress import Progress
    from .label_outputs import write_label_outputs
    from ..runtime import init_ray, plan_cpu_pool, quiet_ray_data, rows_until_stalled

    start = time.time()
    remove_temp_files(out)
    check_fingerprints([out / "instances"], fingerprint, STAGE)
    done = {p.name for p in list_shards(out / "instances")}
    pending = [s for s in shards if s.name not in done]
    log(f"label: {len(shards)} embedding shards, {len(shards) - len(pending)} already labelled in {out}")
    images = instances = 0
    if pending:
        resources = init_ray(runtime.address, log)
        quiet_ray_data()
        size, cpus = plan_cpu_pool(resources.cpus, runtime.num_actors)
        ds = ray.data.from_items([{"path": str(p)} for p in pending], override_num_blocks=len(pending))
        ds = ds.map_batches(stage_cls, batch_size=1, compute=ray.data.ActorPoolStrategy(size=min(size, len(pending))),
                            num_cpus=cpus, fn_constructor_kwargs=kwargs)
        total_images = sum(pq.read_metadata(p).num_rows for p in pending)
        with Progress("label", total_images, "images", log if runtime.progress else (lambda _l: None)) as progress:
            for row in rows_until_stalled(ds.iter_rows(), runtime.stall_timeout_s, "label", log):
                images += int(row["images"])
                instances += int(row["instances"])
                progress.update(int(row["images"]), instances=instances)
    totals = write_label_outputs(out, classes, fingerprint, export)
    return LabelSummary(str(out), fingerprint, len(shards) - len(pending), images, instances, totals[0], totals[1],
                        time.time() - start, totals[2])


def run_sam_clip(embed_dir: Path, out: Path, classes: list[str], clip_resolved, settings: LabelSettings, runtime,
                 log: Callable[[str], None] = print) -> LabelSummary:
    """Label stored embeddings' masks with the SAM + CLIP baseline (images are read again for the cut-outs)."""
    shards = list_shards(Path(embed_dir))
    if not shards:
        raise FileNotFoundError(f"no embedding shards in {embed_dir}")
    fingerprint = stable_hash({"stage": "sam_clip", "clip": clip_resolved.fingerprint(), "classes": classes,
                               "settings": settings.model_dump()})
    kwargs = {"clip_location": clip_resolved, "classes": classes, "labels_dir": str(out), "settings": settings,
              "fingerprint": fingerprint}
    return label_shards(SamClipShardStage, kwargs, shards, Path(out), classes, fingerprint, runtime, log)
