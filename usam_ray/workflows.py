"""Workflows (L5): ``usam-ray run`` and ``usam-ray demo`` chain the stages — class names in, a
labelled and scored dataset out, with the baselines and their comparison.

Stages, each resumed (embed, synth, pseudo, label) or skipped when its output for the same
fingerprint exists (train, train align). The first of ``methods`` works in RUN, any other in
RUN/<method>:

    U-SAM   synth → RUN/synth            (Parquet images per class; none for a folder source)
            embed → RUN/train/embed      (SAM embeddings of the training images)
            train → RUN/head             (MIL teacher, distilled student)
            label → RUN/embed, RUN/labels
    FMbSeg  pseudo → RUN/pseudo, RUN/features   (Stage 1 on the images to label themselves)
            train align → RUN/align
            label → RUN/labels           (refined by SAM unless refined: false)
    eval  → RUN/eval             (when ground truth is given)
    baselines → RUN/[<method>/]baselines/<id>/labels and …/eval; RUN/eval/comparison.json keyed by
            the stable method ids of ``METHOD_NAMES``
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

from .config import DemoConfig, EmbedConfig, EvalConfig, LabelConfig, RunConfig, SynthConfig
from .data.shards import atomic_write_bytes
from .types import Ontology


#: display names of the comparison's stable method ids (``eval/comparison.json`` keys)
METHOD_NAMES = {
    "usam": "U-SAM (MIL + distillation)", "usam_mil": "U-SAM, MIL only (teacher)", "sam_clip": "SAM + CLIP",
    "fmbseg_stage1_1": "FMbSeg Stage 1.1", "fmbseg_stage1": "FMbSeg Stage 1 (1.1 + share of 1.2)",
    "fmbseg": "FMbSeg (base)", "fmbseg_refined": "FMbSeg (refined)",
    "usam_uosam_lro": "U-SAM + UO-SAM LRO", "usam_uosam": "U-SAM + UO-SAM (LRO + GRO)",
    "fmbseg_uosam_lro": "FMbSeg (base) + UO-SAM LRO", "fmbseg_uosam": "FMbSeg (base) + UO-SAM (LRO + GRO)",
    "fmbseg_refined_uosam_lro": "FMbSeg (refined) + UO-SAM LRO",
    "fmbseg_refined_uosam": "FMbSeg (refined) + UO-SAM (LRO + GRO)",
    "coarse": "coarse labels (given)", "coarse_uosam_lro": "coarse + UO-SAM LRO",
    "coarse_uosam": "coarse + UO-SAM (LRO + GRO)",
    "background": "all background",
}


def _train_up_to_date(head_dir: Path, fingerprint: str, settings: dict, files: tuple[str, ...]) -> bool:
    meta = head_dir / "head.json"
    if not meta.is_file() or not all((head_dir / f"{n}.pt").is_file() for n in files):
        return False
    summary = json.loads(meta.read_text())
    trained = {k: v for k, v in summary["settings"].items() if k not in ("runtime", "workers")}
    return summary["embeddings"]["fingerprint"] == fingerprint and trained == settings


def _usam(cfg: RunConfig, where: Path, classes: list[str], log: Callable[[str], None]) -> tuple[dict[str, Path], dict]:
    """U-SAM's stages in ``where``: synth → train/embed → head → embed + labels. Returns the labels
    directories by method id (``usam``; with baselines ``usam_mil`` and ``sam_clip``) and the
    labelling summary."""
    from .models.registry import models_dir_from_env, resolve_default
    from .pipelines.embed import run_embed
    from .pipelines.label import run_label, run_sam_clip
    from .pipelines.synth import run_synth
    from .train.usam import embeddings_info, train_usam

    s = cfg.synth
    if s.source == "folder":
        train_source = f"classes:{s.folder}"
    else:
        run_synth(SynthConfig(classes=cfg.classes, out=where / "synth", synth=s, runtime=cfg.runtime), log=log)
        train_source = str(where / "synth")
    run_embed(EmbedConfig(images=train_source, out=where / "train", sam=cfg.sam, data=cfg.data, runtime=cfg.runtime),
              log=log)
    embed_fp = embeddings_info(where / "train" / "embed")["fingerprint"]
    tcfg = cfg.train.model_copy(update={"embeddings": where / "train" / "embed", "out": where / "head",
                                        "classes": classes})
    settings = tcfg.model_dump(mode="json", exclude={"runtime", "workers"})
    if _train_up_to_date(where / "head", embed_fp, settings, ("teacher", "student", "best")):
        log(f"train: {where / 'head'} is up to date for embeddings {embed_fp}")
    else:
        train_usam(tcfg, log=log)
    lcfg = LabelConfig(images=cfg.images, head=where / "head", checkpoint=cfg.checkpoint, out=where / "labels",
                       overlays=cfg.overlays, export=cfg.export, label=cfg.label, sam=cfg.sam, data=cfg.data,
                       runtime=cfg.runtime)
    summary = run_label(lcfg, log=log, classes=classes).__dict__
    out = {"usam_mil" if cfg.checkpoint == "teacher" else "usam": where / "labels"}
    if not cfg.baselines:
        return out, summary
    quiet = lambda _l: None  # noqa: E731
    base = where / "baselines"
    if cfg.checkpoint != "teacher":
        mil = LabelConfig(embeddings=where / "embed", head=where / "head", checkpoint="teacher",
                          out=base / "mil_only" / "labels", label=cfg.label, runtime=cfg.runtime)
        run_label(mil, log=quiet, classes=classes)
        out["usam_mil"] = mil.out
    clip = resolve_default("clip", cfg.clip_model, models_dir_from_env(cfg.runtime.models_dir))
    run_sam_clip(where / "embed", base / "sam_clip" / "labels", classes, clip,
                 cfg.label.model_copy(update={"score_threshold": 0.70}), cfg.runtime, log=quiet)
    out["sam_clip"] = base / "sam_clip" / "labels"
    return out, summary


def _fmbseg(cfg: RunConfig, where: Path, classes: list[str], log: Callable[[str], None]) -> tuple[dict[str, Path], dict]:
    """FMbSeg's stages in ``where``: pseudo (+ features) on the images themselves → align →
    labels (refined unless ``cfg.refined`` is false). Returns the labels directories by method id
    (``fmbseg_refined`` or ``fmbseg``; with baselines also the other one and Stage 1's
    ``fmbseg_stage1_1`` and ``fmbseg_stage1``) and the (first) labelling summary."""
    from .config import PseudoConfig
    from .pipelines.label_fmbseg import run_label_fmbseg
    from .pipelines.pseudo import run_pseudo, write_stage1_labels

    pseudo = run_pseudo(PseudoConfig(images=cfg.images, out=where / "pseudo", classes=cfg.classes,
                                     clip_model=cfg.clip_model, dino_model=cfg.dino_model, fmbseg=cfg.fmbseg,
                                     sam=cfg.sam, data=cfg.data, runtime=cfg.runtime), log=log)
    acfg = cfg.align.model_copy(update={"pseudo": where / "pseudo", "out": where / "align", "fmbseg": cfg.fmbseg,
                                        "runtime": cfg.runtime})
    settings = acfg.model_dump(mode="json", exclude={"runtime", "workers"})
    if _train_up_to_date(where / "align", pseudo.fingerprint, settings, ("align", "best")):
        log(f"train align: {where / 'align'} is up to date for pseudo labels {pseudo.fingerprint}")
    else:
        from .train.align import train_align

        train_align(acfg, log=log)
    # the refined labels, with baselines the base ones too: one pass when refined (--base-out), else two
    out: dict[str, Path] = {}
    base_out = where / "baselines" / "fmbseg" / "labels" if cfg.refined and cfg.baselines else None
    variants = [cfg.refined] + ([True] if cfg.baselines and not cfg.refined else [])
    summary: dict = {}
    for k, refined in enumerate(variants):
        labels = where / "labels" if k == 0 else where / "baselines" / "fmbseg_refined" / "labels"
        lcfg = LabelConfig(images=cfg.images, head=where / "align", method="fmbseg", refined=refined, out=labels,
                           base_out=base_out if refined else None, overlays=cfg.overlays and k == 0,
                           export=cfg.export, label=cfg.label, sam=cfg.sam, data=cfg.data, runtime=cfg.runtime)
        done = run_label_fmbseg(lcfg, log=log if k == 0 else (lambda _l: None), classes=classes).__dict__
        summary = summary if k else done
        out["fmbseg_refined" if refined else "fmbseg"] = labels
    if base_out is not None:
        out["fmbseg"] = base_out
    if cfg.baselines:
        for key, fraction in (("fmbseg_stage1_1", 0.0), ("fmbseg_stage1", cfg.fmbseg.stage12_fraction)):
            out[key] = where / "baselines" / key / "labels"
            write_stage1_labels(where / "pseudo", out[key], classes, fraction, cfg.align.seed)
    return out, summary


def _refine(cfg: RunConfig, run: Path, labels: dict[str, Path], log: Callable[[str], None]) -> dict[str, Path]:
    """UO-SAM over each method's base labels (U-SAM's; FMbSeg's base when written, else refined) and
    ``cfg.coarse_labels``, all in one SAM pass (``run_refine_many``): the first into
    ``RUN/refined/labels``, the others into ``RUN/baselines/<id>_uosam/labels``; with baselines also
    the LRO-only labels. Returns the labels directories by method id."""
    from .config import RefineConfig
    from .pipelines.refine import run_refine_many

    inputs = {k: labels[k] for k in ("usam", "fmbseg") if k in labels}
    if "fmbseg" in cfg.methods and "fmbseg" not in inputs:
        inputs["fmbseg_refined"] = labels["fmbseg_refined"]
    if cfg.coarse_labels is not None:
        inputs["coarse"] = Path(cfg.coarse_labels)
    out: dict[str, Path] = {}
    first = next(k for k in inputs if k.startswith(cfg.methods[0]))  # usam, or fmbseg / fmbseg_refined
    cfgs = []
    for k, (key, where) in enumerate(sorted(inputs.items(), key=lambda kv: kv[0] != first)):
        target = run / "refined" / "labels" if k == 0 else run / "baselines" / f"{key}_uosam" / "labels"
        lro = run / "baselines" / f"{key}_uosam_lro" / "labels" if cfg.baselines else None
        cfgs.append(RefineConfig(labels=where, images=cfg.images, out=target, lro_out=lro, uosam=cfg.uosam, sam=cfg.sam,
                                 data=cfg.data, export=cfg.export, runtime=cfg.runtime, overlays=cfg.overlays and k == 0))
        if key == "coarse":
            out["coarse"] = where
        if lro is not None:
            out[f"{key}_uosam_lro"] = lro
        out[f"{key}_uosam"] = target
    run_refine_many(cfgs, log=log)
    return out


def run_pipeline(cfg: RunConfig, log: Callable[[str], None] = print) -> dict:
    """Run every method of ``cfg`` and score what it labelled.

    Returns:
        {"labels": the first method's labels summary fields, "eval": its report or None,
        "comparison": {method id: {method, miou, miou_no_background, map50, report}} or None}.
    """
    from .eval.evaluate import run_eval
    from .eval.report import write_reports
    from .pipelines.label_outputs import write_label_outputs

    check_run(cfg)
    classes = list(Ontology.from_names(cfg.classes).classes)
    run = Path(cfg.out)
    labels: dict[str, Path] = {}
    summaries = []
    for k, method in enumerate(cfg.methods):
        dirs, summary = (_usam if method == "usam" else _fmbseg)(cfg, run if k == 0 else run / method, classes, log)
        labels.update(dirs)
        summaries.append(summary)
    primary = next(iter(labels))
    if cfg.refine:
        labels.update(_refine(cfg, run, labels, log))
    result: dict = {"labels": {**summaries[0], "method": primary}, "eval": None, "comparison": None}
    if cfg.gt is None:
        return result
    quiet = lambda _l: None  # noqa: E731
    if cfg.baselines:
        labels["background"] = run / "baselines" / "background" / "labels"
        labels["background"].mkdir(parents=True, exist_ok=True)
        write_label_outputs(labels["background"], classes, "all-background")
    reports = {}
    for key, where in labels.items():
        out = run / "eval" if key == primary else (run / "baselines" / key / "eval" if key == "coarse"
                                                   else where.parent / "eval")
        reports[key] = run_eval(EvalConfig(labels=where, gt=cfg.gt, out=out, runtime=cfg.runtime),
                                log=log if key == primary else quiet)
    report = result["eval"] = reports[primary]
    if len(reports) == 1:
        return result
    order = [k for k in METHOD_NAMES if k in reports]
    comparison = {k: {"method": METHOD_NAMES[k], "miou": reports[k]["semantic"]["miou"],
                      "miou_no_background": reports[k]["semantic"]["miou_no_background"],
                      "map50": (reports[k]["instances"] or {}).get("map50"), "report": reports[k]["written"]["json"]}
                  for k in order}
    atomic_write_bytes(run / "eval" / "comparison.json", json.dumps(comparison, indent=2).encode())
    report["comparison"] = comparison  # report.md and report.json carry the comparison too
    write_reports({k: v for k, v in report.items() if k != "written"}, run / "eval")
    result["comparison"] = comparison
    return result


def comparison_table(comparison: dict) -> str:
    """The baselines table as aligned text (percentages)."""
    def pct(v: Optional[float]) -> str:
        return "—" if v is None else f"{100 * v:6.2f}"

    names = {k: r.get("method", k) for k, r in comparison.items()}
    width = max(len(n) for n in names.values())
    lines = [f"{'':<{width}}  {'mIoU':>6}  {'mIoU-bg':>7}  {'mAP50':>6}"]
    for key, r in comparison.items():
        lines.append(f"{names[key]:<{width}}  {pct(r['miou'])}  {pct(r['miou_no_background']):>7}  {pct(r['map50'])}")
    return "\n".join(lines)


def check_run(cfg: RunConfig) -> None:
    """What can be checked of a run config before any work starts (raises ValueError naming it)."""
    if cfg.out is None or cfg.classes is None or cfg.images is None:
        raise ValueError("run needs out, classes and images (in the config or by --set)")
    Ontology.from_names(cfg.classes)
    if cfg.synth.source == "folder" and cfg.synth.folder is None:
        raise ValueError("synth.source is folder but synth.folder is not set")


def demo_config(cfg: DemoConfig) -> RunConfig:
    """The toy-world run: U-SAM (toy objects → toy SAM embeddings → heads → labels of fresh toy
    scenes), then FMbSeg (toy CLIP + SAM pseudo labels of those scenes → alignment module on toy
    DINOv2 features → labels), each scored, with the baselines."""
    from .data.toyscenes import CLASSES

    out = Path(cfg.out)
    return RunConfig(
        out=out, classes=", ".join(CLASSES), images=str(out / "toy-scenes" / "images"),
        gt=f"folder:{out / 'toy-scenes'}",
        synth={"source": "toy", "per_class": cfg.per_class, "size": 128},
        sam={"model": "sam:toy", "points_per_side": 10},
        # cosine: at the paper's constant rate the heads' training amplifies float rounding (another CPU's
        # SAM embeddings, ~1e-5 apart) into 4-5 points of mIoU; annealed, the same seed lands within ~1.5
        # (README, the demo; bench/usam_float_noise.py)
        train={"epochs": 25, "batch_size": 32, "hidden": 256, "a": 10.0, "lr_schedule": "cosine"},
        label={"score_threshold": 0.5, "nms_iou": 0.5, "min_iou_pred": 0.5},
        baselines=True, clip_model="clip:toy", runtime=cfg.runtime,
        methods=["usam", "fmbseg"], dino_model="dino:toy",
        refine=cfg.refine, coarse_labels=out / "toy-scenes-coarse" if cfg.refine else None,
        # the toy SAM's predicted IoUs rarely reach the paper's 0.97 (see bench/fmbseg_stage1.py)
        fmbseg={"pred_iou_thresh": 0.8},
        # the paper's one-block module; on the toy world it collapses under TSupCon as the paper
        # weighs it (text terms K/(B·N+K)) and learns when text and patch terms weigh alike
        # (README, FMbSeg; bench/fmbseg.py --loss tsupcon measures the paper's form)
        align={"kind": "block", "loss": "tsupcon_balanced", "temperature": 0.2},
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
    coarse = Path(cfg.out) / "toy-scenes-coarse"
    if cfg.refine and not (coarse / "classes.txt").is_file():
        from .data.toyscenes import write_coarse_labels

        # the coarsened ground truth UO-SAM refines beside U-SAM's and FMbSeg's labels (seeded)
        write_coarse_labels(gt, coarse, seed=cfg.seed + 1)
    return run_pipeline(demo_config(cfg), log=log)
