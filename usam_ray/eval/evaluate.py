"""Parallel evaluation: per-shard confusion matrices in Ray tasks, summed; one COCOeval for mAP.

``evaluate_shard`` is the unit of work (pure numpy, usable without Ray). ``run_eval`` splits the
ground truth's records into shards, runs ``evaluate_shard`` on them as Ray tasks, sums the
integer matrices (so the result equals ``evaluate_local`` exactly), gathers ground-truth and
predicted instances into one COCOeval, and writes the reports.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from ..data.groundtruth import (
    CocoGroundTruth, FolderGroundTruth, GroundTruth, VocGroundTruth, image_key, parse_gt, read_label_png,
)
from .labels import LabelsDir, normalise_results, results_from_json, results_from_shard
from .metrics import instance_scores, remap_prediction

READERS: dict[str, type[GroundTruth]] = {"voc": VocGroundTruth, "coco": CocoGroundTruth, "folder": FolderGroundTruth}


class EvalError(ValueError):
    """Predictions that cannot be evaluated against the ground truth (e.g. size mismatches)."""


@dataclass
class ShardResult:
    """What one shard contributes.

    Attributes:
        cm (np.ndarray): (C, C) int64 confusion matrix summed over the shard's images.
        images (int): images evaluated.
        missing (list[str]): ground-truth keys with no prediction (counted as all background).
        mismatched (list[str]): "key: prediction HxW, ground truth HxW" messages.
        gt_instances (dict[str, list[dict]]): key → ground-truth instances (readers that derive them
            per image, e.g. VOC SegmentationObject).
    """

    cm: np.ndarray
    images: int = 0
    missing: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    gt_instances: dict[str, list[dict]] = field(default_factory=dict)

    def add(self, other: "ShardResult") -> None:
        """Reduce: sum matrices and counts, concatenate lists."""
        self.cm += other.cm
        self.images += other.images
        self.missing += other.missing
        self.mismatched += other.mismatched
        self.gt_instances.update(other.gt_instances)


def evaluate_shard(records: list[dict], gt_kind: str, semantic_root: str, lut: Optional[np.ndarray],
                   num_classes: int, with_instances: bool = False) -> ShardResult:
    """Confusion matrix of the predictions for ``records`` (one ground-truth reader's records);
    ``semantic_root`` is the folder of prediction PNGs (``LabelsDir.semantic_dir``)."""
    from .metrics import confusion_matrix

    reader = READERS[gt_kind]
    semantic_dir = Path(semantic_root)
    out = ShardResult(np.zeros((num_classes, num_classes), dtype=np.int64))
    for rec in records:
        gt = reader.load_semantic(rec)
        path = semantic_dir / f"{rec['key']}.png"
        if path.is_file():
            pred = read_label_png(path)
            if pred.shape != gt.shape:
                out.mismatched.append(f"{rec['key']}: prediction {pred.shape[0]}x{pred.shape[1]} ({path}), "
                                      f"ground truth {gt.shape[0]}x{gt.shape[1]}")
                continue
            pred = remap_prediction(pred, lut)
        else:
            pred = np.zeros_like(gt)
            out.missing.append(rec["key"])
        out.cm += confusion_matrix(gt, pred, num_classes)
        out.images += 1
        if with_instances:
            inst = reader.instances_for(rec)
            if inst is not None:
                out.gt_instances[rec["key"]] = inst
    return out


@dataclass
class EvalInputs:
    """Everything resolved before the work starts."""

    gt: GroundTruth
    labels: LabelsDir
    records: list[dict]
    lut: Optional[np.ndarray]
    with_instances: bool


def prepare(gt_spec: str, labels_root: Path) -> EvalInputs:
    """Open ground truth and labels and check they fit (class names). Raises on any problem."""
    gt = parse_gt(gt_spec)
    labels = LabelsDir(labels_root)
    lut = labels.class_map(gt.classes)
    records = gt.records()
    if not records:
        raise EvalError(f"ground truth {gt_spec} has no images")
    return EvalInputs(gt, labels, records, lut, gt.has_instances and labels.has_instances)


def evaluate_local(inputs: EvalInputs) -> ShardResult:
    """The single-process baseline: every image in this process."""
    return evaluate_shard(inputs.records, inputs.gt.kind, str(inputs.labels.semantic_dir), inputs.lut,
                          len(inputs.gt.classes), inputs.with_instances)


def evaluate_parallel(inputs: EvalInputs, shard_size: int = 64, address: Optional[str] = None,
                      on_shard: Optional[Callable[[int, int], None]] = None) -> ShardResult:
    """Per-shard confusion matrices as Ray tasks (1 CPU each), reduced by summation in the driver.

    At most 2 × CPUs tasks are in flight; results are summed as they arrive (streaming: memory
    holds a few (C, C) matrices, never the dataset). Plain tasks, not Ray Data: measured here,
    a Ray Data map over the same shards ran no faster than one process, plain tasks ~2× on 2 CPUs.
    """
    import ray

    from ..runtime import init_ray

    resources = init_ray(address)
    task = ray.remote(num_cpus=1)(evaluate_shard)
    recs = inputs.records
    shards = [recs[i:i + shard_size] for i in range(0, len(recs), shard_size)]
    lut = None if inputs.lut is None else ray.put(inputs.lut)
    c = len(inputs.gt.classes)
    total = ShardResult(np.zeros((c, c), dtype=np.int64))
    window = max(2, 2 * int(resources.cpus))
    pending: list = []
    done = 0
    next_shard = 0
    while next_shard < len(shards) or pending:
        while next_shard < len(shards) and len(pending) < window:
            pending.append(task.remote(shards[next_shard], inputs.gt.kind, str(inputs.labels.semantic_dir), lut, c,
                                       inputs.with_instances))
            next_shard += 1
        ready, pending = ray.wait(pending, num_returns=1)
        total.add(ray.get(ready[0]))
        done += 1
        if on_shard:
            on_shard(done, len(shards))
    return total


def gather_results(inputs: EvalInputs, parallel: bool) -> tuple[list[dict], str]:
    """Predicted instances from instance shards (read by Ray tasks when ``parallel``) or the JSON."""
    shards = inputs.labels.instance_shards()
    if shards:
        if parallel:
            import ray

            task = ray.remote(num_cpus=1)(results_from_shard)
            results = [r for part in ray.get([task.remote(p) for p in shards]) for r in part]
        else:
            results = [r for p in shards for r in results_from_shard(p)]
        return results, str(inputs.labels.instances_dir)
    return results_from_json(inputs.labels.results_path), str(inputs.labels.results_path)


def instance_gt(inputs: EvalInputs, reduced: ShardResult) -> tuple[dict, dict[str, int]]:
    """The COCO ground-truth dict (class ids as category ids) and key → COCO image id."""
    gt = inputs.gt
    if isinstance(gt, CocoGroundTruth):
        return gt.coco_dict(), {r["key"]: r["coco_id"] for r in inputs.records}
    key_to_id = {r["key"]: i + 1 for i, r in enumerate(inputs.records)}
    images = [{"id": key_to_id[r["key"]], "height": r["height"], "width": r["width"], "file_name": r["key"]}
              for r in inputs.records]
    if isinstance(gt, FolderGroundTruth):
        data = gt.coco_dict() or {"images": [], "annotations": []}
        id_to_key = {im["id"]: image_key(im["file_name"]) for im in data["images"]}
        anns = [{**a, "image_id": key_to_id[id_to_key[a["image_id"]]]} for a in data["annotations"]
                if id_to_key.get(a["image_id"]) in key_to_id]
    else:
        anns = [{**a, "image_id": key_to_id[k]} for k, insts in reduced.gt_instances.items() for a in insts]
    for i, a in enumerate(anns):
        a["id"] = i + 1
    cats = [{"id": i, "name": n} for i, n in enumerate(gt.classes) if i > 0]
    return {"images": images, "annotations": anns, "categories": cats}, key_to_id


def score_instances(inputs: EvalInputs, reduced: ShardResult, parallel: bool) -> Optional[dict[str, Any]]:
    """mAP50 / mAP of the predicted instances, or None when either side has no instances."""
    if not inputs.with_instances:
        return None
    gt_coco, key_to_id = instance_gt(inputs, reduced)
    raw, source = gather_results(inputs, parallel)
    results, dropped = normalise_results(raw, key_to_id, inputs.gt.classes, inputs.labels.classes, source)
    s = instance_scores(gt_coco, results)
    return {"map50": s.map50, "map": s.map, "ap50_per_class": {inputs.gt.classes[k]: v for k, v in s.ap50_per_class.items()},
            "predictions": s.num_predictions, "gt_instances": s.num_gt, "predictions_outside_gt": dropped,
            "source": source}


def default_out(labels: Path) -> Path:
    """Where a report goes without ``--out``: ``RUN/eval`` for a run's ``RUN/labels`` (the folder
    beside it holds ``run.json``), else a sibling ``<labels>-eval`` — never a parent's shared
    ``eval/``, which another labels folder's report would overwrite."""
    labels = Path(labels)
    if labels.name == "labels" and (labels.parent / "run.json").is_file():
        return labels.parent / "eval"
    return labels.parent / f"{labels.name}-eval"


def run_eval(cfg, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Evaluate ``cfg.labels`` against ``cfg.gt``, write the reports, return the report dict.

    Raises:
        GroundTruthError, LabelsError: unreadable inputs or classes that do not fit.
        EvalError: predictions whose size differs from the ground truth (every such image named).
    """
    from .metrics import scores_from_confusion
    from .report import build_report, write_reports

    if cfg.labels is None or cfg.gt is None:
        raise ValueError("eval needs --labels and --gt")
    start = time.time()
    inputs = prepare(cfg.gt, Path(cfg.labels))
    out = Path(cfg.out) if cfg.out is not None else default_out(Path(cfg.labels))
    shards = max(1, -(-len(inputs.records) // cfg.shard_size))
    log(f"eval: {len(inputs.records)} ground-truth images, {len(inputs.gt.classes)} classes, "
        f"{shards if cfg.parallel else 1} shard(s){' with instances' if inputs.with_instances else ''}")
    if cfg.parallel:
        from ..progress import Progress

        with Progress("eval", shards, "shards", log if cfg.runtime.progress else (lambda _l: None)) as bar:
            reduced = evaluate_parallel(inputs, cfg.shard_size, cfg.runtime.address, lambda _d, _n: bar.update(1))
    else:
        reduced = evaluate_local(inputs)
    if reduced.mismatched:
        shown = "\n  ".join(reduced.mismatched[:20])
        more = f"\n  … and {len(reduced.mismatched) - 20} more" if len(reduced.mismatched) > 20 else ""
        raise EvalError(f"{len(reduced.mismatched)} predictions differ in size from the ground truth:\n  {shown}{more}")
    scores = scores_from_confusion(reduced.cm)
    instances = score_instances(inputs, reduced, cfg.parallel)
    gt_keys = {r["key"] for r in inputs.records}
    extra = sorted(inputs.labels.semantic_keys() - gt_keys)
    if extra:
        log(f"eval: {len(extra)} predicted images have no ground truth in {cfg.gt} (e.g. {extra[0]}): "
            "is it the right ground truth?")
    if reduced.missing:
        log(f"eval: {len(reduced.missing)} ground-truth images have no prediction in {cfg.labels} (counted as background)")
    report = build_report(inputs.gt.classes, scores, reduced.cm, reduced.images, reduced.missing, extra, instances,
                          cfg.gt, str(cfg.labels), inputs.labels.fingerprints(), time.time() - start,
                          shards if cfg.parallel else 1)
    paths = write_reports(report, out)
    sheet = write_contact_sheet(inputs, out / "contact_sheet.png")
    if sheet is not None:
        paths["contact_sheet"] = sheet
    report["written"] = {k: str(v) for k, v in paths.items()}
    return report


def write_contact_sheet(inputs: EvalInputs, path: Path, n: int = 8) -> Optional[Path]:
    """Ground truth beside prediction for the first ``n`` ground-truth images that have a
    prediction and a readable image (None when none has): one PNG a person can glance at."""
    from ..data.overlay import contact_sheet, read_rgb, render_overlay
    from ..data.shards import atomic_write_bytes

    names = list(inputs.gt.classes)
    label_names = inputs.labels.classes or names
    reader = READERS[inputs.gt.kind]
    rows = []
    for rec in inputs.records:
        if len(rows) >= n:
            break
        pred_path = inputs.labels.semantic_path(rec["key"])
        image = read_rgb(rec.get("image_path") or "")
        if image is None or not pred_path.is_file():
            continue
        gt = reader.load_semantic(rec)
        pred = read_label_png(pred_path)
        if pred.shape != gt.shape or image.shape[:2] != gt.shape:
            continue
        rows.append((rec["key"], render_overlay(image, gt, names, title="ground truth", long_side=320),
                     render_overlay(image, pred, label_names, title="prediction", long_side=320)))
    if not rows:
        return None
    atomic_write_bytes(path, contact_sheet(rows))
    return path
