"""A labels directory's dataset-level files, merged from its shards when labelling ends.

``write_label_outputs`` reads ``images/`` and ``instances/`` shards and writes, atomically:

- ``coco_dataset.json``: COCO dataset (images with integer ids, RLE annotations, categories);
- ``coco_results.json``: the same annotations as a COCO results list (same image ids);
- ``classes.json``: ``{"classes": ["background", …], "categories": […], "fingerprint": …}``;
- with ``export.formats``: ``coco_dataset_polygons.json`` (``coco-polygons``) and
  ``label_studio_tasks.json`` + ``label_studio_config.xml`` (``label-studio``);
- ``overlays/index.html`` when overlays were drawn.

``export_labels`` writes the extra formats of an existing labels directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from ..config import ExportSection
from ..data.shards import atomic_write_bytes, list_shards

EXPORT_FILES = {"coco-polygons": ["coco_dataset_polygons.json"],
                "label-studio": ["label_studio_tasks.json", "label_studio_config.xml"]}


def read_label_rows(out: Path) -> tuple[list[dict], list[dict]]:
    """(labelled-image rows, instance rows) of a labels directory's shards."""
    import pyarrow.parquet as pq

    images = [r for s in list_shards(out / "images") for r in pq.read_table(s).to_pylist()]
    instances = [r for s in list_shards(out / "instances") for r in pq.read_table(s).to_pylist()]
    return images, instances


def _json(path: Path, data) -> None:
    atomic_write_bytes(path, json.dumps(data, separators=(",", ":")).encode())


def write_exports(out: Path, classes: list[str], fingerprint: str, export: ExportSection,
                  images: list[dict], instances: list[dict]) -> list[str]:
    """Write the formats of ``export.formats``; returns the file names written."""
    from ..data.coco import coco_dataset
    from ..data.label_studio import label_studio_tasks, labeling_config
    from ..masks import class_colours

    written = []
    if "coco-polygons" in export.formats:
        _json(out / "coco_dataset_polygons.json",
              coco_dataset(images, instances, classes, "polygons", f"usam-ray labels {fingerprint} (polygons)"))
        written += EXPORT_FILES["coco-polygons"]
    if "label-studio" in export.formats:
        _json(out / "label_studio_tasks.json",
              label_studio_tasks(images, instances, classes, export.image_url, f"usam-ray {fingerprint}"))
        atomic_write_bytes(out / "label_studio_config.xml",
                           labeling_config(classes, class_colours(len(classes) + 1)).encode())
        written += EXPORT_FILES["label-studio"]
    return written


def write_label_outputs(out: Path, classes: list[str], fingerprint: str,
                        export: Optional[ExportSection] = None) -> tuple[int, int, list[str]]:
    """Merge the shards of ``out`` into its dataset-level files (see the module docstring).

    Returns:
        (labelled images, instances, extra files written).
    """
    from ..data.coco import coco_dataset, coco_results
    from ..data.overlay import overlay_index_html

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    images, instances = read_label_rows(out)
    dataset = coco_dataset(images, instances, classes, "rle", f"usam-ray labels {fingerprint}")
    _json(out / "coco_dataset.json", dataset)
    _json(out / "coco_results.json", coco_results(dataset))
    meta = {"classes": ["background", *classes], "categories": dataset["categories"], "fingerprint": fingerprint}
    atomic_write_bytes(out / "classes.json", json.dumps(meta, indent=2).encode())
    written = write_exports(out, classes, fingerprint, export or ExportSection(), images, instances)
    overlays = out / "overlays"
    if overlays.is_dir():
        keys = sorted(p.relative_to(overlays).with_suffix("").as_posix() for p in overlays.rglob("*.png"))
        atomic_write_bytes(overlays / "index.html", overlay_index_html(overlays, keys, f"labels in {out}").encode())
    return len(images), len(instances), written


def export_labels(labels: Path, export: ExportSection) -> list[Path]:
    """Write ``export.formats`` for an existing labels directory (its ``classes.json`` and shards).

    Raises:
        FileNotFoundError: not a labels directory written by ``usam-ray label``.
    """
    labels = Path(labels)
    meta_path = labels / "classes.json"
    if not meta_path.is_file() or not list_shards(labels / "instances"):
        raise FileNotFoundError(f"{labels} is not a labels directory (no classes.json or instances/ shards)")
    if not list_shards(labels / "images"):
        raise FileNotFoundError(f"{labels} has no images/ shards (labelled by an older usam-ray): label it again")
    meta = json.loads(meta_path.read_text())
    images, instances = read_label_rows(labels)
    names = write_exports(labels, meta["classes"][1:], meta.get("fingerprint", ""), export, images, instances)
    return [labels / n for n in names]
