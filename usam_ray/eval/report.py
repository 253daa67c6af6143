"""Evaluation reports: ``report.json`` (every figure), ``report.md`` (per-class table),
``per_class_iou.png`` (bar chart) and the headline table printed to the terminal."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..data.shards import atomic_write_bytes, utc_now
from .metrics import SemanticScores


def _num(v: float) -> Optional[float]:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else round(float(v), 6)


def build_report(classes: list[str], scores: SemanticScores, cm: np.ndarray, images: int, missing: list[str],
                 extra_predictions: list[str], instances: Optional[dict[str, Any]], gt_spec: str, labels_root: str,
                 fingerprints: dict[str, Any], seconds: float, shards: int) -> dict[str, Any]:
    """The report as a JSON-ready dict (NaN written as null)."""
    report: dict[str, Any] = {
        "created": utc_now(),
        "ground_truth": gt_spec,
        "labels": labels_root,
        "labels_fingerprints": fingerprints,
        "classes": classes,
        "images": images,
        "images_missing_prediction": len(missing),
        "missing_predictions": sorted(missing),
        "predictions_not_in_ground_truth": len(extra_predictions),
        "predictions_without_ground_truth": sorted(extra_predictions),
        "semantic": {
            "miou": _num(scores.miou),
            "miou_no_background": _num(scores.miou_no_bg),
            "pixel_accuracy": _num(scores.pixel_acc),
            "mean_class_accuracy": _num(scores.mean_acc),
            "pixels": scores.pixels,
            "per_class_iou": {c: _num(v) for c, v in zip(classes, scores.iou)},
            "per_class_accuracy": {c: _num(v) for c, v in zip(classes, scores.acc)},
            "confusion_matrix": cm.tolist(),
        },
        "instances": None,
        "shards": shards,
        "seconds": round(seconds, 3),
    }
    if instances is not None:
        report["instances"] = {**instances, "map50": _num(instances["map50"]), "map": _num(instances["map"]),
                               "ap50_per_class": {k: _num(v) for k, v in instances["ap50_per_class"].items()}}
    return report


def _pct(v: Optional[float]) -> str:
    return "—" if v is None else f"{100 * v:.2f}"


def headline(report: dict[str, Any]) -> str:
    """The few numbers a user looks at first, as an aligned text table."""
    sem = report["semantic"]
    inst = report["instances"] or {}
    rows = [
        ("mIoU", _pct(sem["miou"])),
        ("mIoU (no background)", _pct(sem["miou_no_background"])),
        ("pixel accuracy", _pct(sem["pixel_accuracy"])),
        ("mAP50", _pct(inst.get("map50")) if inst else "— (no instances)"),
        ("mAP50:95", _pct(inst.get("map")) if inst else "—"),
        ("images scored", str(report["images"])),
        ("ground truth without prediction", str(report["images_missing_prediction"])),
        ("predictions without ground truth", str(report["predictions_not_in_ground_truth"])),
    ]
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def markdown(report: dict[str, Any]) -> str:
    """``report.md``: headline, the methods' comparison (when the run made one), per-class table,
    images on one side only."""
    sem = report["semantic"]
    inst = report["instances"] or {}
    ap = inst.get("ap50_per_class", {}) if inst else {}
    lines = [
        "# Evaluation report", "",
        f"Ground truth `{report['ground_truth']}`, labels `{report['labels']}`, {report['images']} images "
        f"({report['created']}).", "",
        "```", headline(report), "```", "",
    ]
    if report.get("comparison"):
        lines += ["## Methods compared on the same images", "", "| method | mIoU | mIoU (no background) | mAP50 |",
                  "| --- | ---: | ---: | ---: |"]
        lines += [f"| {r.get('method', key)} | {_pct(r['miou'])} | {_pct(r['miou_no_background'])} | {_pct(r['map50'])} |"
                  for key, r in report["comparison"].items()]
        lines.append("")
    lines += ["## Per class", "", "| class | IoU | accuracy | AP50 |", "| --- | ---: | ---: | ---: |"]
    for i, c in enumerate(report["classes"]):
        ap_cell = "" if i == 0 or not ap else _pct(ap.get(c))  # background is not an instance class
        lines.append(f"| {c} | {_pct(sem['per_class_iou'][c])} | {_pct(sem['per_class_accuracy'][c])} | {ap_cell} |")
    lines.append("")
    if any(v is None for v in sem["per_class_iou"].values()):
        lines += ["IoU is — where a class is in neither ground truth nor prediction (left out of the means).", ""]
    if ap and any(ap.get(c) is None for c in report["classes"][1:]):
        lines += ["AP50 is — where a class has no ground-truth instance.", ""]
    for title, keys in (("Ground-truth images without a prediction (counted as background)",
                         report["missing_predictions"]),
                        ("Predicted images without ground truth (not scored)",
                         report.get("predictions_without_ground_truth", []))):
        if keys:
            lines += [f"## {title}: {len(keys)}", ""] + [f"- {k}" for k in keys[:50]]
            if len(keys) > 50:
                lines.append(f"- … and {len(keys) - 50} more (report.json)")
            lines.append("")
    if report["labels_fingerprints"]:
        lines += ["", "Labels fingerprints: " + ", ".join(f"{k} `{v}`" for k, v in report["labels_fingerprints"].items())]
    return "\n".join(lines) + "\n"


def bar_chart(report: dict[str, Any], path: Path, width: int = 640) -> None:
    """Horizontal bar chart of per-class IoU (PNG, drawn with PIL)."""
    from PIL import Image, ImageDraw

    per = report["semantic"]["per_class_iou"]
    names = list(per)
    row, left, pad = 18, max(80, 7 * max(len(n) for n in names) + 10), 10
    height = pad * 2 + row * (len(names) + 1)
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    span = width - left - 60
    draw.text((pad, pad), f"per-class IoU (mIoU {_pct(report['semantic']['miou'])})", fill="black")
    for i, name in enumerate(names):
        y = pad + row * (i + 1)
        v = per[name]
        draw.text((pad, y + 2), name, fill="black")
        if v is not None:
            draw.rectangle([left, y + 3, left + int(span * v), y + row - 3], fill=(70, 120, 200))
        draw.text((left + (int(span * v) if v is not None else 0) + 4, y + 2), _pct(v), fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def write_reports(report: dict[str, Any], out: Path) -> dict[str, Path]:
    """Write report.json, report.md and per_class_iou.png under ``out`` (atomically each)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "md": out / "report.md", "png": out / "per_class_iou.png"}
    atomic_write_bytes(paths["json"], json.dumps(report, indent=2).encode())
    atomic_write_bytes(paths["md"], markdown(report).encode())
    bar_chart(report, paths["png"])
    return paths
