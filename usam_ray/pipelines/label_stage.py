"""The label stages: a Ray Data actor stage over embedding shards that labels each shard's images
(head or CLIP probabilities → thresholds → mask NMS → instances and a semantic map) and writes
the shard's semantic PNGs, optional overlays, its labelled-images shard and then its instance
shard (the done-marker), atomically. One summary row per shard out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import LabelSettings
from ..data.groundtruth import image_key
from ..data.overlay import instance_overlay, label_png
from ..data.schema import INSTANCES_SCHEMA, LABELLED_IMAGES_SCHEMA, shard_metadata
from ..data.shards import atomic_write_bytes, write_shard
from ..masks import palette
from ..methods.usam import select_instances, semantic_map
from ..types import MaskSet
from .stages import object_column, require_columns


@dataclass
class LabelledImage:
    """One labelled image: its id and path, its instances (MaskSet, RLE, 0-based ``class_ids``)
    and its semantic map ((H, W) uint8, 0 = background) at the image's size."""

    image_id: str
    path: str
    instances: MaskSet
    semantic: np.ndarray


def write_labelled_shard(labels_dir: Path, name: str, images: list[LabelledImage], classes: list[str],
                         fingerprint: str, provenance: str, overlays: bool = False, pal=None) -> int:
    """Write a shard of labelled images into ``labels_dir``: each image's semantic PNG (and overlay),
    then the labelled-images shard ``images/<name>``, then the instance shard ``instances/<name>``
    (written last: it marks the shard done). Every file is written atomically.

    Returns:
        the number of instances written.
    """
    import pyarrow as pa

    labels_dir, pal = Path(labels_dir), pal if pal is not None else palette()
    inst_rows, image_rows = [], []
    for im in images:
        key, (height, width), inst = image_key(im.image_id), im.semantic.shape, im.instances
        atomic_write_bytes(labels_dir / "semantic" / f"{key}.png", label_png(im.semantic, pal))
        if overlays:
            data = instance_overlay(im.path, im.semantic, classes, inst)
            if data is not None:
                atomic_write_bytes(labels_dir / "overlays" / f"{key}.png", data)
        image_rows.append({"image_id": key, "file_name": im.image_id, "height": int(height), "width": int(width),
                           "instances": len(inst.masks)})
        for rle, c, sc, b in zip(inst.masks, inst.class_ids, inst.scores, inst.boxes):
            inst_rows.append({"image_id": key, "class_id": int(c) + 1, "class_name": classes[int(c)],
                              "score": float(sc), "height": int(height), "width": int(width),
                              "counts": rle["counts"], "box": [float(v) for v in b], "provenance": provenance})
    write_shard(pa.Table.from_pylist(image_rows, schema=LABELLED_IMAGES_SCHEMA), labels_dir / "images" / name,
                shard_metadata("labelled_images", fingerprint, {}))
    write_shard(pa.Table.from_pylist(inst_rows, schema=INSTANCES_SCHEMA), labels_dir / "instances" / name,
                shard_metadata("instances", fingerprint, {}))
    return len(inst_rows)


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
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        ids, paths = table.column("image_id").to_pylist(), table.column("path").to_pylist()
        labelled = [LabelledImage(ids[i], paths[i], inst, sem) for i, inst, sem in self.label_table(table)]
        name = Path(str(path)).name
        return name, table.num_rows, write_labelled_shard(self.dir, name, labelled, self.classes, self.fingerprint,
                                                          self.provenance, self.overlays, self.pal)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
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
