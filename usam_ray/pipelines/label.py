"""The label pipeline: embeddings → head → threshold → mask NMS → instances and semantic maps.

``run_label`` labels images (embedding them first into ``RUN/embed``, resumable) or stored
embeddings (``--from-embeddings``: a new head or new thresholds cost seconds, not GPU hours).
Each embedding shard becomes one Ray Data task on a head actor, which writes the shard's
semantic PNGs and (optional) overlays, its labelled-images shard, then its instance shard,
atomically; a re-run skips shards whose instance shard exists. At the end
``label_outputs.write_label_outputs`` merges the shards into ``coco_dataset.json``,
``coco_results.json``, ``classes.json`` and the ``--format`` exports.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..config import EmbedConfig, LabelConfig, LabelSettings, stable_hash
from ..data.groundtruth import image_key
from ..data.schema import INSTANCES_SCHEMA, LABELLED_IMAGES_SCHEMA, shard_metadata
from ..data.shards import (
    atomic_write_bytes, check_fingerprints, list_shards, read_shard_meta, remove_temp_files, update_manifest, utc_now,
    write_shard,
)
from ..masks import palette
from ..methods.usam import select_instances, semantic_map
from ..models.registry import weights_fingerprint

STAGE = "label"


class HeadMismatchError(ValueError):
    """A head trained on embeddings of another SAM (or other classes) than the labelling run's."""


def png_bytes(label_map: np.ndarray, pal: list[int]) -> bytes:
    """A paletted PNG of a (H, W) uint8 class-id map."""
    from PIL import Image

    img = Image.fromarray(label_map, "P")
    img.putpalette(pal)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def overlay_bytes(image_path: str, label_map: np.ndarray, classes: list[str], inst) -> Optional[bytes]:
    """The image with its instances drawn (class-coloured fills and contours, "class score" tags,
    a legend), at least 512 px on its long side; None when the image cannot be read or its size
    differs from the label map's.

    Args:
        image_path (str): the image file.
        label_map (np.ndarray): (H, W) uint8 class ids.
        classes (list[str]): class names without background.
        inst (MaskSet): the image's instances (RLE masks, 0-based class ids, scores).
    """
    from ..data.overlay import png, read_rgb, render_overlay
    from ..masks import rles_to_masks

    image = read_rgb(image_path)
    if image is None or image.shape[:2] != label_map.shape:
        return None
    masks = rles_to_masks(list(inst.masks), label_map.shape)  # (N, H, W) bool
    shapes = [(m, int(c) + 1, float(sc)) for m, c, sc in zip(masks, inst.class_ids, inst.scores)]
    return png(render_overlay(image, label_map, ["background", *classes], shapes))


class LabelShardStage:
    """Ray Data stage over a batch of embedding shard paths: each shard's images labelled and
    written (semantic PNGs, optional overlays, then its instance shard, atomically); one summary
    row per shard out. The head is loaded once per actor; a shard's tokens are read through Arrow
    into one (B, P, T) array and classified in one call.

    Args:
        head_path (str): head checkpoint (``best.pt``…).
        labels_dir (str): output labels directory.
        settings (LabelSettings): thresholds.
        fingerprint (str): label fingerprint stored in instance shards.
        overlays (bool): also write overlay PNGs.

    Output columns: ``shard`` (name), ``images``, ``instances`` (counts written).
    """

    INPUT = ("path",)
    provenance = "usam"

    def __init__(self, head_path: str, labels_dir: str, settings: LabelSettings, fingerprint: str,
                 overlays: bool = False) -> None:
        from ..heads.checkpoint import load_head

        self.head, ckpt = load_head(Path(head_path))
        self._setup(ckpt["classes"], labels_dir, settings, fingerprint, overlays)

    def _setup(self, classes: list[str], labels_dir: str, settings: LabelSettings, fingerprint: str,
               overlays: bool) -> None:
        """What every labelling stage keeps: classes, output folder, thresholds, fingerprint, palette."""
        self.classes = list(classes)
        self.dir = Path(labels_dir)
        self.settings = settings
        self.fingerprint = fingerprint
        self.overlays = overlays
        self.pal = palette()

    def probs(self, table, sets: list) -> list[np.ndarray]:
        """Per image (P, C) class probabilities of its masks: the head's softmax over its tokens,
        all images of the shard in one call."""
        import torch

        from ..data.schema import embeddings_tokens

        tokens = torch.as_tensor(embeddings_tokens(table).astype(np.float32))
        if tokens.numel() == 0:
            return [np.zeros((len(ms), len(self.classes)), np.float32) for ms in sets]
        b, p, t = tokens.shape
        with torch.inference_mode():
            probs = self.head(tokens.reshape(b * p, t)).softmax(-1).reshape(b, p, -1).numpy()
        return list(probs)

    def label_table(self, table) -> list[tuple[int, object, np.ndarray]]:
        """(row index, instances MaskSet, semantic map (H, W) uint8 at the image's size) for each
        embeddings row of ``table``."""
        from ..data.schema import embeddings_masksets

        sets = embeddings_masksets(table, tokens=False)
        heights, widths = table.column("height").to_numpy(), table.column("width").to_numpy()  # (B,)
        out = []
        for i, (ms, probs) in enumerate(zip(sets, self.probs(table, sets))):
            inst = select_instances(ms, probs, self.settings)
            out.append((i, inst, semantic_map(inst, int(heights[i]), int(widths[i]))))
        return out

    def label_shard(self, path: str) -> tuple[str, int, int]:
        """Label one embedding shard; returns (shard name, images, instances)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        ids, paths = table.column("image_id").to_pylist(), table.column("path").to_pylist()
        inst_rows, image_rows = [], []
        for i, inst, sem in self.label_table(table):
            key, (height, width) = image_key(ids[i]), sem.shape
            atomic_write_bytes(self.dir / "semantic" / f"{key}.png", png_bytes(sem, self.pal))
            if self.overlays:
                data = overlay_bytes(paths[i], sem, self.classes, inst)
                if data is not None:
                    atomic_write_bytes(self.dir / "overlays" / f"{key}.png", data)
            image_rows.append({"image_id": key, "file_name": ids[i], "height": int(height), "width": int(width),
                               "instances": len(inst.masks)})
            for rle, c, sc, b in zip(inst.masks, inst.class_ids, inst.scores, inst.boxes):
                inst_rows.append({"image_id": key, "class_id": int(c) + 1, "class_name": self.classes[int(c)],
                                  "score": float(sc), "height": int(height), "width": int(width),
                                  "counts": rle["counts"], "box": [float(v) for v in b], "provenance": self.provenance})
        name = Path(str(path)).name
        meta = shard_metadata("labelled_images", self.fingerprint, {})
        # the images shard first: the instance shard, written last, marks the shard done
        write_shard(pa.Table.from_pylist(image_rows, schema=LABELLED_IMAGES_SCHEMA), self.dir / "images" / name, meta)
        write_shard(pa.Table.from_pylist(inst_rows, schema=INSTANCES_SCHEMA), self.dir / "instances" / name,
                    shard_metadata("instances", self.fingerprint, {}))
        return name, table.num_rows, len(inst_rows)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from .stages import object_column, require_columns

        require_columns("label", batch, self.INPUT)
        done = [self.label_shard(str(path)) for path in batch["path"]]
        return {"shard": object_column([d[0] for d in done]), "images": np.array([d[1] for d in done], np.int64),
                "instances": np.array([d[2] for d in done], np.int64)}


class SamClipShardStage(LabelShardStage):
    """The SAM + CLIP baseline as a label stage: CLIP classifies each mask's cut-out.

    Args:
        clip_location (ResolvedModel): the CLIP to load.
        classes (list[str]): class names (prompted as "a photo of a {c}").
        labels_dir, settings, fingerprint, overlays: as LabelShardStage.
    """

    provenance = "sam_clip"

    def __init__(self, clip_location, classes: list[str], labels_dir: str, settings: LabelSettings,
                 fingerprint: str, overlays: bool = False) -> None:
        from ..models.clip import load_clip

        self.clip = load_clip(clip_location)
        self._setup(classes, labels_dir, settings, fingerprint, overlays)

    def probs(self, table, sets: list) -> list[np.ndarray]:
        from PIL import Image

        from ..methods.sam_clip import clip_mask_probs

        out = []
        for path, ms in zip(table.column("path").to_pylist(), sets):
            image = np.asarray(Image.open(path).convert("RGB"))
            out.append(clip_mask_probs(self.clip, image, ms, self.classes))
        return out


def check_head(ckpt: dict, embed_models: dict[str, str], embed_dir: Path, head_path: Path,
               classes: Optional[list[str]] = None) -> None:
    """Refuse a head trained on another SAM's embeddings, or for other classes than asked.

    Raises:
        HeadMismatchError: naming both SAM fingerprints (or both class lists).
    """
    trained = {k: v for k, v in ckpt["embeddings"]["models"].items() if k.startswith("sam:")}
    labelling = {k: v for k, v in embed_models.items() if k.startswith("sam:")}
    if trained != labelling:
        raise HeadMismatchError(
            f"head {head_path} was trained on embeddings of {trained} but {embed_dir} holds embeddings of "
            f"{labelling}: train a head on this SAM's embeddings, or label with the SAM the head knows"
        )
    if classes is not None and list(classes) != list(ckpt["classes"]):
        raise HeadMismatchError(f"head {head_path} predicts {ckpt['classes']}, not the requested {classes}")


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
    from ..heads.checkpoint import head_info
    from .embed import run_embed

    start = time.time()
    if cfg.head is None or cfg.out is None:
        raise ValueError("label needs --head and --out")
    head_path = Path(cfg.head) / f"{cfg.checkpoint}.pt" if Path(cfg.head).is_dir() else Path(cfg.head)
    if not head_path.is_file():
        raise FileNotFoundError(f"head checkpoint {head_path} does not exist (run `usam-ray train usam` first)")
    ckpt = head_info(head_path)  # classes and embeddings, from head.json (no torch here)
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
                    head=str(head_path), config=cfg.model_dump(mode="json"))
    kwargs = {"head_path": str(head_path), "labels_dir": str(out), "settings": settings, "fingerprint": fingerprint,
              "overlays": cfg.overlays}
    summary = label_shards(LabelShardStage, kwargs, shards, out, ckpt["classes"], fingerprint, cfg.runtime, log,
                           cfg.export)
    summary.seconds = time.time() - start
    update_manifest(out.parent, STAGE, status="complete", finished=utc_now(), images=summary.images_total,
                    instances=summary.instances_total)
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
    from ..runtime import init_ray, plan_cpu_pool, quiet_ray_data

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
            for row in ds.iter_rows():
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
