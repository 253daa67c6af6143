"""Workflows (L5): ``usam-ray run`` and ``usam-ray demo`` chain the stages — class names in, a
labelled and scored dataset out, with the baselines and their comparison.

Stages, each resumed (embed, synth, label) or skipped when its output for the same fingerprint
exists (train):

    synth → RUN/synth            (Parquet images per class; none for a folder source)
    embed → RUN/train/embed      (SAM embeddings of the training images)
    train → RUN/head             (MIL teacher, distilled student)
    label → RUN/embed, RUN/labels
    eval  → RUN/eval             (when ground truth is given)
    baselines → RUN/baselines/{mil_only,sam_clip,background}/ (labels + eval), RUN/eval/comparison.json
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

from .config import DemoConfig, EmbedConfig, EvalConfig, LabelConfig, RunConfig, SynthConfig
from .data.shards import atomic_write_bytes
from .types import Ontology


def _train_up_to_date(head_dir: Path, embed_fp: str, settings: dict) -> bool:
    meta = head_dir / "head.json"
    if not meta.is_file() or not all((head_dir / f"{n}.pt").is_file() for n in ("teacher", "student", "best")):
        return False
    summary = json.loads(meta.read_text())
    trained = {k: v for k, v in summary["settings"].items() if k not in ("runtime", "workers")}
    return summary["embeddings"]["fingerprint"] == embed_fp and trained == settings


def run_pipeline(cfg: RunConfig, log: Callable[[str], None] = print) -> dict:
    """Run every stage of ``cfg``; returns {"labels": summary, "eval": report or None, "comparison": …}."""
    from .eval.evaluate import run_eval
    from .eval.report import write_reports
    from .models.registry import models_dir_from_env, resolve_default
    from .train.usam import embeddings_info, train_usam
    from .pipelines.embed import run_embed
    from .pipelines.label import run_label, run_sam_clip
    from .pipelines.label_outputs import write_label_outputs
    from .pipelines.synth import run_synth

    check_run(cfg)
    ontology = Ontology.from_names(cfg.classes)
    classes = list(ontology.classes)
    run = Path(cfg.out)
    s = cfg.synth
    if s.source == "folder":
        train_source = f"classes:{s.folder}"
    else:
        run_synth(SynthConfig(classes=cfg.classes, out=run / "synth", synth=s, runtime=cfg.runtime), log=log)
        train_source = str(run / "synth")
    run_embed(EmbedConfig(images=train_source, out=run / "train", sam=cfg.sam, data=cfg.data, runtime=cfg.runtime),
              log=log)
    embed_fp = embeddings_info(run / "train" / "embed")["fingerprint"]
    tcfg = cfg.train.model_copy(update={"embeddings": run / "train" / "embed", "out": run / "head", "classes": classes})
    settings = tcfg.model_dump(mode="json", exclude={"runtime", "workers"})
    if _train_up_to_date(run / "head", embed_fp, settings):
        log(f"train: {run / 'head'} is up to date for embeddings {embed_fp}")
    else:
        train_usam(tcfg, log=log)
    lcfg = LabelConfig(images=cfg.images, head=run / "head", checkpoint=cfg.checkpoint, out=run / "labels",
                       overlays=cfg.overlays, export=cfg.export, label=cfg.label, sam=cfg.sam, data=cfg.data,
                       runtime=cfg.runtime)
    labels = run_label(lcfg, log=log, classes=classes)
    result: dict = {"labels": labels.__dict__, "eval": None, "comparison": None}
    if cfg.gt is None:
        return result
    quiet = lambda _l: None  # noqa: E731
    report = run_eval(EvalConfig(labels=run / "labels", gt=cfg.gt, out=run / "eval", runtime=cfg.runtime), log=log)
    result["eval"] = report
    if not cfg.baselines:
        return result
    rows = {f"U-SAM ({cfg.checkpoint}: MIL + distillation)" if cfg.checkpoint != "teacher" else "U-SAM (MIL only)": report}
    base = run / "baselines"
    mil = LabelConfig(embeddings=run / "embed", head=run / "head", checkpoint="teacher",
                      out=base / "mil_only" / "labels", label=cfg.label, runtime=cfg.runtime)
    run_label(mil, log=quiet, classes=classes)
    rows["MIL only (teacher)"] = run_eval(EvalConfig(labels=mil.out, gt=cfg.gt, out=base / "mil_only" / "eval",
                                                      runtime=cfg.runtime), log=quiet)
    clip = resolve_default("clip", cfg.clip_model, models_dir_from_env(cfg.runtime.models_dir))
    sam_clip_settings = cfg.label.model_copy(update={"score_threshold": 0.70})
    run_sam_clip(run / "embed", base / "sam_clip" / "labels", classes, clip, sam_clip_settings, cfg.runtime, log=quiet)
    rows[f"SAM + CLIP ({clip.spec.name}, 0.70)"] = run_eval(
        EvalConfig(labels=base / "sam_clip" / "labels", gt=cfg.gt, out=base / "sam_clip" / "eval",
                   runtime=cfg.runtime), log=quiet)
    background = base / "background" / "labels"
    background.mkdir(parents=True, exist_ok=True)
    write_label_outputs(background, classes, "all-background")
    rows["all background"] = run_eval(EvalConfig(labels=background, gt=cfg.gt, out=base / "background" / "eval",
                                                 runtime=cfg.runtime), log=quiet)
    comparison = {name: {"miou": r["semantic"]["miou"], "miou_no_background": r["semantic"]["miou_no_background"],
                         "map50": (r["instances"] or {}).get("map50"), "report": r["written"]["json"]}
                  for name, r in rows.items()}
    atomic_write_bytes(run / "eval" / "comparison.json", json.dumps(comparison, indent=2).encode())
    report["comparison"] = comparison  # report.md and report.json carry the comparison too
    write_reports({k: v for k, v in report.items() if k != "written"}, run / "eval")
    result["comparison"] = comparison
    return result


def comparison_table(comparison: dict) -> str:
    """The baselines table as aligned text (percentages)."""
    def pct(v: Optional[float]) -> str:
        return "—" if v is None else f"{100 * v:6.2f}"

    width = max(len(k) for k in comparison)
    lines = [f"{'':<{width}}  {'mIoU':>6}  {'mIoU-bg':>7}  {'mAP50':>6}"]
    for name, r in comparison.items():
        lines.append(f"{name:<{width}}  {pct(r['miou'])}  {pct(r['miou_no_background']):>7}  {pct(r['map50'])}")
    return "\n".join(lines)


def check_run(cfg: RunConfig) -> None:
    """What can be checked of a run config before any work starts (raises ValueError naming it)."""
    if cfg.out is None or cfg.classes is None or cfg.images is None:
        raise ValueError("run needs out, classes and images (in the config or by --set)")
    Ontology.from_names(cfg.classes)
    if cfg.synth.source == "folder" and cfg.synth.folder is None:
        raise ValueError("synth.source is folder but synth.folder is not set")


def demo_config(cfg: DemoConfig) -> RunConfig:
    """The toy-world run: toy objects → toy SAM embeddings → heads → labels of fresh toy scenes → eval."""
    from .data.toyscenes import CLASSES

    out = Path(cfg.out)
    return RunConfig(
        out=out, classes=", ".join(CLASSES), images=str(out / "toy-scenes" / "images"),
        gt=f"folder:{out / 'toy-scenes'}",
        synth={"source": "toy", "per_class": cfg.per_class, "size": 128},
        sam={"model": "sam:toy", "points_per_side": 10},
        train={"epochs": 25, "batch_size": 32, "hidden": 256, "a": 10.0},
        label={"score_threshold": 0.5, "nms_iou": 0.5, "min_iou_pred": 0.5},
        baselines=True, clip_model="clip:toy", runtime=cfg.runtime,
    )


def check_demo(cfg: DemoConfig) -> None:
    """Refuse a demo that its run directory cannot hold: scenes already written with another count
    or seed (ValueError naming the folder and the option)."""
    scenes = Path(cfg.out) / "toy-scenes"
    meta = scenes / "scenes.json"
    if meta.is_file():
        have = json.loads(meta.read_text())
        if have.get("n") != cfg.scenes or have.get("seed") != cfg.seed:
            raise ValueError(f"--scenes {cfg.scenes}: {scenes} holds {have.get('n')} scenes of seed {have.get('seed')}; "
                             f"use another --out or --scenes {have.get('n')}")
    elif (scenes / "classes.txt").is_file():
        n = len(list((scenes / "images").glob("*.png")))
        if n != cfg.scenes:
            raise ValueError(f"--scenes {cfg.scenes}: {scenes} holds {n} scenes; use another --out or --scenes {n}")


def run_demo(cfg: DemoConfig, log: Callable[[str], None] = print) -> dict:
    """Write the held-out toy scenes (``cfg.seed``) with ground truth, then ``run_pipeline(demo_config(cfg))``."""
    from .data.toyscenes import write_scene_dataset

    check_demo(cfg)
    gt = Path(cfg.out) / "toy-scenes"
    if not (gt / "classes.txt").is_file():
        write_scene_dataset(gt, cfg.scenes, seed=cfg.seed)
        atomic_write_bytes(gt / "scenes.json", json.dumps({"n": cfg.scenes, "seed": cfg.seed}).encode())
    return run_pipeline(demo_config(cfg), log=log)
