"""The ``usam-ray`` command line. Each command builds a config and calls the library.

Importing this module does not import torch or ray: commands import what they need when run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from ..config import (
    CONFIGS, DemoConfig, EmbedConfig, EvalConfig, LabelConfig, PseudoConfig, RefineConfig, RunConfig, SynthConfig,
    TrainAlignConfig,
    TrainUsamConfig,
    detect_config_kind, load_config,
)
from ..progress import Terminal

app = typer.Typer(
    name="usam-ray",
    help="Label whole image datasets with semantic and instance masks for the classes you name, "
    "using Segment Anything on Ray.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: no type labels on flags, [brackets] kept as written
)
models_app = typer.Typer(help="List registered models, or write tiny random test models.", no_args_is_help=True)
config_app = typer.Typer(help="Show resolved configurations and their fields.", no_args_is_help=True)
app.add_typer(models_app, name="models")
toy_app = typer.Typer(help="The toy world: procedural scenes with ground truth, and the toy model zoo.",
                      no_args_is_help=True)
train_app = typer.Typer(help="Train heads on Ray Train.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(toy_app, name="toy")
app.add_typer(train_app, name="train")

ConfigOpt = typer.Option(None, "--config", "-c", metavar="FILE", help="YAML config file (see configs/).")
SetOpt = typer.Option(None, "--set", "-s", metavar="KEY=VALUE",
                      help="Override a setting: dotted.key=value (repeatable; `usam-ray config show` lists them).")
ModelsOpt = typer.Option(
    None, "--models", metavar="DIR", help="Folder of local weights overriding registry sources (default: $USAM_RAY_MODELS)."
)
REQUIRED = "[required, here or in --config]"


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"usam-ray {version('usam-ray')}")
        except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
            typer.echo("usam-ray (not installed)")
        raise typer.Exit(0)


@app.callback()
def _main_options(
    show_version: bool = typer.Option(False, "--version", is_eager=True, callback=_version,
                                      help="Print the version and exit."),
    verbose: bool = typer.Option(False, "--verbose", "-v",
                                 help="Show Ray's own logs in the terminal (otherwise they go to Ray's session files)."),
) -> None:
    """Label whole image datasets with semantic and instance masks for the classes you name."""
    import os

    if verbose:
        os.environ["USAM_RAY_VERBOSE"] = "1"


def _err(line: str) -> None:
    """A line to the current ``sys.stderr`` (click's echo caches the original stream, which
    ``native_stderr_to_file`` sends to a file)."""
    print(line, file=sys.stderr, flush=True)


def _fail(message: str, code: int = 2) -> None:
    _err(f"error: {message}")
    raise typer.Exit(code)


def _require(cfg, options: dict[str, str], command: str) -> None:
    """Fail with one line when a required setting is missing (before any work starts)."""
    missing = [opt for key, opt in options.items() if getattr(cfg, key) is None]
    if missing:
        _fail(f"{command} needs {' and '.join(missing)} (on the command line or in --config)")


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that are the user's input, reported as one line instead of a traceback."""
    from ..data.shards import StageConflictError
    from ..data.sources import SourceError
    from ..models.registry import ModelNotFoundError
    from ..models.sam import CheckpointError

    return (SourceError, ModelNotFoundError, CheckpointError, StageConflictError, ValueError, FileNotFoundError,
            KeyError)


def _overrides(sets: Optional[List[str]], **fields: object) -> list[str]:
    """``--set`` items plus the dedicated options given (those win)."""
    out = list(sets or [])
    for key, value in fields.items():
        if value is not None and value is not False:
            out.append(f"{key}={json.dumps(str(value)) if isinstance(value, Path) else json.dumps(value)}")
    return out


def _echo_image_stage(done: str, summary) -> None:
    """The closing lines of a per-image stage (embed, pseudo): this run, the totals on disk, and
    where the error rows are."""
    typer.echo(
        f"{done}, {summary.errors} errors this run ({summary.already_done} already done); {summary.out} now holds "
        f"{summary.rows_total} images and {summary.errors_total} error rows [fingerprint {summary.fingerprint}, "
        f"{summary.seconds:.1f}s]"
    )
    if summary.errors_total:
        typer.echo(f"error rows: {summary.out}/errors/ (image id, path, stage, error type, message)")


def _finish(run_dir) -> None:
    """End a stage command: exit 3 (``submission.EXIT_INCOMPLETE``) with the status lines when the
    run directory is not complete (an image neither done nor an error row, a killed stage, a
    conflict): what a job's caller and ``usam-ray status`` both see."""
    from ..data.status import COMPLETE, format_status, run_status
    from ..submission import EXIT_INCOMPLETE

    st = run_status(Path(run_dir))
    if st.state not in (COMPLETE, "empty"):
        _err(format_status(st))
        raise typer.Exit(EXIT_INCOMPLETE)


@app.command()
def embed(
    images: Optional[str] = typer.Option(
        None, "--images", "-i", metavar="SRC",
        help="Image source: a folder (recursive), classes:DIR (DIR/<class>/*), or Parquet file/folder with image "
        f"bytes. {REQUIRED}",
    ),
    out: Optional[Path] = typer.Option(None, "--out", "-o", metavar="RUN", help=f"Run directory; shards go to "
                                       f"RUN/embed/. {REQUIRED}"),
    config: Optional[Path] = ConfigOpt,
    sets: Optional[List[str]] = SetOpt,
    models: Optional[Path] = ModelsOpt,
    retry_errors: bool = typer.Option(False, "--retry-errors", help="Try images that failed before again."),
) -> None:
    """Compute SAM mask embeddings (grid prompts → masks, mask tokens, scores) for every image.

    Re-running with the same configuration continues where the last run stopped.
    """
    term = Terminal()
    try:
        cfg = load_config(EmbedConfig, config, _overrides(
            sets, images=images, out=out, **{"runtime.models_dir": models}, retry_errors=retry_errors),
            options={"images": "--images", "out": "--out", "runtime.models_dir": "--models"})
        _require(cfg, {"images": "--images", "out": "--out"}, "embed")
        from ..pipelines.embed import run_embed

        summary = run_embed(cfg, log=term)
    except _user_errors() as exc:
        _fail(str(exc))
    _echo_image_stage(f"embedded {summary.embedded} images", summary)
    _finish(cfg.out)


@app.command()
def pseudo(
    images: Optional[str] = typer.Option(None, "--images", "-i", metavar="SRC",
                                         help=f"Image source (folder, classes:DIR or Parquet). {REQUIRED}"),
    classes: Optional[str] = typer.Option(None, "--classes", metavar="NAMES",
                                          help=f'Classes, comma-separated: "person, bicycle, dog". {REQUIRED}'),
    out: Optional[Path] = typer.Option(None, "--out", "-o", metavar="RUN/pseudo", help="Pseudo-label folder; DINOv2 "
                                       f"features go beside it (RUN/features). {REQUIRED}"),
    config: Optional[Path] = ConfigOpt,
    sets: Optional[List[str]] = SetOpt,
    models: Optional[Path] = ModelsOpt,
    retry_errors: bool = typer.Option(False, "--retry-errors", help="Try images that failed before again."),
) -> None:
    """FMbSeg Stage 1: CLIP + SAM pseudo labels of every image, and its DINOv2 patch features.

    Re-running with the same configuration continues where the last run stopped.
    """
    term = Terminal()
    try:
        options = {"images": "--images", "classes": "--classes", "out": "--out", "runtime.models_dir": "--models"}
        cfg = load_config(PseudoConfig, config, _overrides(
            sets, images=images, classes=classes, out=out, **{"runtime.models_dir": models}, retry_errors=retry_errors),
            options=options)
        _require(cfg, {"images": "--images", "classes": "--classes", "out": "--out"}, "pseudo")
        from ..pipelines.pseudo import run_pseudo

        summary = run_pseudo(cfg, log=term)
    except _user_errors() as exc:
        _fail(str(exc))
    _echo_image_stage(f"pseudo-labelled {summary.labelled} images ({summary.masks} masks)", summary)
    _finish(Path(cfg.out).parent)


LABEL_OPTIONS = {"images": "--images", "embeddings": "--from-embeddings", "head": "--head", "out": "--out",
                 "runtime.models_dir": "--models", "export.formats": "--format", "method": "--method",
                 "refined": "--refined", "base_out": "--base-out"}


@app.command()
def label(
    images: Optional[str] = typer.Option(None, "--images", "-i", metavar="SRC",
                                         help="Images to label (embedded first into OUT/../embed)."),
    from_embeddings: Optional[Path] = typer.Option(
        None, "--from-embeddings", metavar="DIR",
        help="Label stored embeddings (RUN/embed) without running SAM again. One of --images or this is required."),
    head: Optional[Path] = typer.Option(None, "--head", metavar="DIR",
                                        help=f"Head directory (RUN/head, RUN/align) or a .pt checkpoint. {REQUIRED}"),
    method: Optional[str] = typer.Option(None, "--method", metavar="METHOD",
                                         help="usam (SAM masks → U-SAM head) or fmbseg (DINOv2 → alignment head) "
                                         "[default: usam]."),
    refined: bool = typer.Option(False, "--refined", help="fmbseg: refine the base labels with SAM's automatic masks."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", metavar="DIR", help=f"Labels directory (RUN/labels). {REQUIRED}"),
    base_out: Optional[Path] = typer.Option(None, "--base-out", metavar="DIR",
                                            help="fmbseg --refined: also write the base labels here (same pass)."),
    classes: Optional[str] = typer.Option(None, "--classes", metavar="TEXT", help="Expected classes (checked against the head)."),
    overlays: bool = typer.Option(False, "--overlays", help="Also write overlay PNGs and overlays/index.html."),
    formats: Optional[List[str]] = typer.Option(
        None, "--format", metavar="FORMAT",
        help="Also write coco-polygons (coco_dataset_polygons.json, for CVAT) or label-studio "
        "(label_studio_tasks.json + label_studio_config.xml); repeatable."),
    config: Optional[Path] = ConfigOpt,
    sets: Optional[List[str]] = SetOpt,
    models: Optional[Path] = ModelsOpt,
) -> None:
    """Label every image: SAM masks → head → threshold → mask NMS → instances + semantic maps
    (--method fmbseg: DINOv2 patches → alignment head → nearest class text, --refined by SAM).

    Writes instances/part-*.parquet, coco_dataset.json (images, RLE annotations, categories),
    coco_results.json (same image ids), classes.json, semantic/<key>.png (and overlays/).
    Resumable; --from-embeddings relabels in seconds with a new head or thresholds.
    """
    term = Terminal()
    try:
        from ..types import Ontology

        names = list(Ontology.from_names(classes).classes) if classes is not None else None
        cfg = load_config(LabelConfig, config, _overrides(
            sets, images=images, embeddings=from_embeddings, head=head, out=out, overlays=overlays, method=method,
            refined=refined, base_out=base_out, **{"runtime.models_dir": models, "export.formats": formats or None}),
            options=LABEL_OPTIONS)
        _require(cfg, {"head": "--head", "out": "--out"}, "label")
        if cfg.base_out is not None and not (cfg.method == "fmbseg" and cfg.refined):
            _fail("--base-out applies to --method fmbseg --refined only")
        if cfg.method == "fmbseg":
            if cfg.images is None:
                _fail("label --method fmbseg needs --images (it runs DINOv2 on them)")
            from ..pipelines.label_fmbseg import run_label_fmbseg as run_label
        elif cfg.refined:
            _fail("--refined applies to --method fmbseg only")
        elif cfg.images is None and cfg.embeddings is None:
            _fail("label needs --images or --from-embeddings")
        else:
            from ..pipelines.label import run_label

        summary = run_label(cfg, log=term, classes=names)
    except _user_errors() as exc:
        _fail(str(exc))
    typer.echo(f"labelled {summary.images} images ({summary.instances} instances) this run; {summary.out} holds "
               f"{summary.images_total} semantic maps and {summary.instances_total} instances")
    typer.echo(f"COCO: {summary.out}/coco_dataset.json, {summary.out}/coco_results.json"
               + "".join(f", {summary.out}/{name}" for name in summary.exports))
    _finish(Path(cfg.out).parent)


REFINE_OPTIONS = {"labels": "--labels", "images": "--images", "out": "--out", "classes_file": "--classes-file",
                  "lro_out": "--lro-out", "uosam.use_global": "--no-global", "runtime.models_dir": "--models",
                  "export.formats": "--format"}


@app.command()
def refine(
    labels: Optional[Path] = typer.Option(None, "--labels", "-l", metavar="DIR",
                                          help=f"Coarse labels: a labels directory or a folder of label PNGs. {REQUIRED}"),
    images: Optional[str] = typer.Option(None, "--images", "-i", metavar="SRC",
                                         help=f"The images those labels belong to. {REQUIRED}"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", metavar="DIR", help=f"Refined labels directory. {REQUIRED}"),
    no_global: bool = typer.Option(False, "--no-global", help="Local region optimizer only (no automatic-mask vote)."),
    classes_file: Optional[Path] = typer.Option(
        None, "--classes-file", metavar="FILE",
        help="Class names, one per line, background first (when DIR has no classes.txt or classes.json)."),
    lro_out: Optional[Path] = typer.Option(None, "--lro-out", metavar="DIR",
                                           help="Also write the LRO-only labels here (same SAM pass)."),
    overlays: bool = typer.Option(False, "--overlays", help="Also write overlay PNGs and overlays/index.html."),
    formats: Optional[List[str]] = typer.Option(
        None, "--format", metavar="FORMAT", help="Also write coco-polygons or label-studio; repeatable."),
    config: Optional[Path] = ConfigOpt,
    sets: Optional[List[str]] = SetOpt,
    models: Optional[Path] = ModelsOpt,
) -> None:
    """Refine coarse semantic labels with SAM (UO-SAM): per class region a positive and a negative
    point and a box → two SAM passes (LRO), then SAM's automatic masks vote (GRO).

    Reads ours (DIR/semantic/*.png + classes.json) or a folder of paletted/grayscale PNGs named
    like the images (DIR/<key>.png or DIR/masks/<key>.png) with classes.txt. Writes the same
    labels directory as `label` (semantic PNGs, instances, COCO), provenance uosam / uosam_lro.
    Resumable; an image without a coarse PNG becomes an error row.
    """
    term = Terminal()
    try:
        sets = [*(sets or []), *(["uosam.use_global=false"] if no_global else [])]
        cfg = load_config(RefineConfig, config, _overrides(
            sets, labels=labels, images=images, out=out, classes_file=classes_file, lro_out=lro_out,
            overlays=overlays, **{"runtime.models_dir": models, "export.formats": formats or None}),
            options=REFINE_OPTIONS)
        _require(cfg, {"labels": "--labels", "images": "--images", "out": "--out"}, "refine")
        from ..pipelines.refine import run_refine

        summary = run_refine(cfg, log=term)
    except _user_errors() as exc:
        _fail(str(exc))
    typer.echo(f"refined {summary.images} images ({summary.instances} instances) this run; {summary.out} holds "
               f"{summary.images_total} semantic maps and {summary.instances_total} instances")
    _finish(Path(cfg.out).parent)


@app.command()
def export(
    labels: Path = typer.Argument(..., metavar="LABELS", help="Labels directory written by `usam-ray label`."),
    formats: List[str] = typer.Option(..., "--format", metavar="FORMAT",
                                      help="coco-polygons or label-studio (repeatable)."),
    image_url: Optional[str] = typer.Option(None, "--image-url", metavar="TEMPLATE",
                                            help="Label Studio image URL template with {file_name}."),
) -> None:
    """Write other label formats from an existing labels directory (no relabelling)."""
    from ..config import ExportSection

    try:
        section = load_config(ExportSection, None, _overrides(None, formats=formats, image_url=image_url),
                              options={"formats": "--format", "image_url": "--image-url"})
        from ..pipelines.label_outputs import export_labels

        written = export_labels(Path(labels), section)
    except _user_errors() as exc:
        _fail(str(exc))
    typer.echo("wrote " + ", ".join(str(p) for p in written))


SYNTH_OPTIONS = {"classes": "--classes", "out": "--out", "synth.source": "--source", "synth.per_class": "--per-class",
                 "synth.model": "--model", "synth.template": "--template", "synth.steps": "--steps",
                 "synth.size": "--size", "synth.seed": "--seed", "runtime.models_dir": "--models"}


@app.command()
def synth(
    classes: str = typer.Option(..., "--classes", metavar="TEXT", help='Classes, e.g. "person, bicycle, dog".'),
    out: Path = typer.Option(..., "--out", "-o", metavar="DIR", help="Folder for the Parquet image shards (RUN/synth)."),
    source: str = typer.Option("diffusion", metavar="TEXT", help="diffusion or toy."),
    per_class: int = typer.Option(200, "--per-class", metavar="N", help="Images per class."),
    model: str = typer.Option("auto", metavar="TEXT", help="Diffusion model (registry name, hub id or folder)."),
    template: str = typer.Option("a photo of a {c}", metavar="TEXT", help="Prompt template."),
    steps: int = typer.Option(50, metavar="N", help="Sampling steps."),
    size: int = typer.Option(512, metavar="N", help="Image side."),
    seed: int = typer.Option(0, metavar="N", help="Base seed."),
    config: Optional[Path] = ConfigOpt,
    sets: Optional[List[str]] = SetOpt,
    models: Optional[Path] = ModelsOpt,
) -> None:
    """Generate per-class training images (Stable Diffusion or the toy world) as Parquet shards; resumable."""
    term = Terminal()
    try:
        from ..types import Ontology

        Ontology.from_names(classes)
        cfg = load_config(SynthConfig, config, _overrides(
            sets, classes=classes, out=out, **{"synth.source": source, "synth.per_class": per_class,
                                               "synth.model": model, "synth.template": template, "synth.steps": steps,
                                               "synth.size": size, "synth.seed": seed, "runtime.models_dir": models}),
            options=SYNTH_OPTIONS)
        from ..pipelines.synth import run_synth

        result = run_synth(cfg, log=term)
    except _user_errors() as exc:
        _fail(str(exc))
    typer.echo(f"synth: {result['generated']} generated, {result['total']} images in {cfg.out}")


@app.command()
def run(
    config: Path = typer.Argument(..., metavar="CONFIG", help="Run config YAML (configs/voc.yaml, configs/coco80.yaml, …)."),
    sets: Optional[List[str]] = SetOpt,
    out: Optional[Path] = typer.Option(None, "--out", "-o", metavar="RUN", help="Run directory (overrides the config's)."),
    models: Optional[Path] = ModelsOpt,
) -> None:
    """synth → embed → train → label → eval, each stage resumed or skipped when already done."""
    term = Terminal()
    try:
        cfg = load_config(RunConfig, config, _overrides(sets, out=out, **{"runtime.models_dir": models}),
                          options={"out": "--out", "runtime.models_dir": "--models"})
        _require(cfg, {"out": "out", "classes": "classes", "images": "images"}, "run")
        from ..workflows import check_run, run_pipeline

        check_run(cfg)
        result = run_pipeline(cfg, log=term)
    except _user_errors() as exc:
        _fail(str(exc))
    _print_run(result, cfg.out)
    _finish(cfg.out)


@app.command()
def demo(
    out: Optional[Path] = typer.Option(None, "--out", "-o", metavar="RUN", help="Run directory [default: runs/demo]."),
    scenes: Optional[int] = typer.Option(None, metavar="N", help="Toy scenes to label and score [default: 60]."),
    per_class: Optional[int] = typer.Option(None, "--per-class", metavar="N", help="Toy training images per class [default: 80]."),
    config: Optional[Path] = ConfigOpt,
    sets: Optional[List[str]] = SetOpt,
) -> None:
    """The whole job on the toy world with the shipped toy zoo, on a local Ray instance: toy objects →
    toy SAM embeddings → MIL + distillation heads → labels of fresh toy scenes → mIoU / mAP50, with baselines."""
    term = Terminal()
    try:
        cfg = load_config(DemoConfig, config, _overrides(sets, out=out, scenes=scenes, per_class=per_class),
                          options={"out": "--out", "scenes": "--scenes", "per_class": "--per-class"})
        from ..workflows import check_demo, run_demo

        check_demo(cfg)
        result = run_demo(cfg, log=term)
    except _user_errors() as exc:
        _fail(str(exc))
    _print_run(result, cfg.out)


def _print_run(result: dict, out) -> None:
    from ..eval.report import headline
    from ..workflows import comparison_table

    if result.get("eval"):
        typer.echo(headline(result["eval"]))
    if result.get("comparison"):
        typer.echo("")
        typer.echo(comparison_table(result["comparison"]))
    typer.echo(f"\nlabels: {out}/labels (semantic/, instances/, coco_dataset.json, coco_results.json)")
    typer.echo(f"overlays: {out}/labels/overlays/index.html")
    if result.get("eval"):
        typer.echo(f"report: {out}/eval/report.md, ground truth beside prediction: {out}/eval/contact_sheet.png")


@train_app.command("usam")
def train_usam_cmd(
    embeddings: Optional[Path] = typer.Option(None, "--embeddings", "-e", metavar="DIR",
                                              help=f"Embed stage directory (RUN/train/embed). {REQUIRED}"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", metavar="DIR", help=f"Head directory (RUN/head). {REQUIRED}"),
    classes: Optional[str] = typer.Option(None, "--classes", metavar="TEXT", help='Classes in order, e.g. "person, bicycle, dog".'),
    config: Optional[Path] = ConfigOpt,
    sets: Optional[List[str]] = SetOpt,
) -> None:
    """Train U-SAM's MIL teacher, then the uncertainty-distilled student (TorchTrainer).

    Writes teacher.pt, student.pt, best.pt and head.json; shows each phase's epochs and losses.
    """
    term = Terminal()
    try:
        from ..types import Ontology

        names = list(Ontology.from_names(classes).classes) if classes is not None else None
        cfg = load_config(TrainUsamConfig, config, _overrides(sets, embeddings=embeddings, out=out, classes=names),
                          options={"embeddings": "--embeddings", "out": "--out", "classes": "--classes"})
        _require(cfg, {"embeddings": "--embeddings", "out": "--out"}, "train usam")
        from ..train.usam import train_usam

        summary = train_usam(cfg, log=term)
    except _user_errors() as exc:
        _fail(str(exc))
    typer.echo(f"heads written to {cfg.out}: teacher.pt, student.pt, best.pt (student epoch {summary['best']['epoch']})")


@train_app.command("align")
def train_align_cmd(
    pseudo: Optional[Path] = typer.Option(None, "--pseudo", "-p", metavar="DIR",
                                          help=f"Pseudo-label folder (RUN/pseudo) from `usam-ray pseudo`. {REQUIRED}"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", metavar="DIR", help=f"Head directory (RUN/align). {REQUIRED}"),
    kind: Optional[str] = typer.Option(None, "--kind", metavar="KIND",
                                       help="Alignment module: block (the paper's), mlp or linear [default: block]."),
    config: Optional[Path] = ConfigOpt,
    sets: Optional[List[str]] = SetOpt,
    models: Optional[Path] = ModelsOpt,
) -> None:
    """Train FMbSeg's alignment module (DINOv2 patches → CLIP text space, TSupCon) on Ray Train.

    Reads the DINOv2 features cached by `pseudo` (RUN/features); writes align.pt, best.pt and head.json.
    """
    term = Terminal()
    try:
        cfg = load_config(TrainAlignConfig, config,
                          _overrides(sets, pseudo=pseudo, out=out, kind=kind, **{"runtime.models_dir": models}),
                          options={"pseudo": "--pseudo", "out": "--out", "kind": "--kind", "runtime.models_dir": "--models"})
        _require(cfg, {"pseudo": "--pseudo", "out": "--out"}, "train align")
        from ..train.align import train_align

        summary = train_align(cfg, log=term)
    except _user_errors() as exc:
        _fail(str(exc))
    typer.echo(f"alignment module written to {cfg.out}: align.pt, best.pt (epoch {summary['best']['epoch'] + 1})")


@app.command("eval")
def eval_(
    labels: Optional[Path] = typer.Option(None, "--labels", "-l", metavar="DIR",
                                          help=f"Labels directory (RUN/labels). {REQUIRED}"),
    gt: Optional[str] = typer.Option(
        None, "--gt", metavar="SPEC",
        help=f"Ground truth: voc:ROOT[@split], coco:ANNOTATIONS.json[:IMAGES_DIR] or folder:ROOT. {REQUIRED}"
    ),
    out: Optional[Path] = typer.Option(None, "--out", "-o", metavar="DIR",
                                       help="Report directory [default: RUN/eval for RUN/labels, else LABELS-eval]."),
    config: Optional[Path] = ConfigOpt,
    sets: Optional[List[str]] = SetOpt,
) -> None:
    """Score labels against ground truth: mIoU, pixel accuracy, mAP50 — in parallel over shards.

    Writes report.json, report.md, a per-class IoU chart and a contact sheet (ground truth beside
    prediction), and prints the headline table.
    """
    term = Terminal()
    try:
        cfg = load_config(EvalConfig, config, _overrides(sets, labels=labels, gt=gt, out=out),
                          options={"labels": "--labels", "gt": "--gt", "out": "--out"})
        _require(cfg, {"labels": "--labels", "gt": "--gt"}, "eval")
        from ..eval.evaluate import run_eval

        report = run_eval(cfg, log=term)
    except _user_errors() as exc:
        _fail(str(exc))
    from ..eval.report import headline

    typer.echo(headline(report))
    typer.echo("reports: " + ", ".join(report["written"].values()))



@models_app.command("list")
def models_list(models: Optional[Path] = ModelsOpt) -> None:
    """List registered models and whether their weights are found."""
    from ..models.registry import ModelNotFoundError, list_specs, models_dir_from_env, resolve

    try:
        folder = models_dir_from_env(models)
    except ModelNotFoundError as exc:
        _fail(str(exc))
    for spec in list_specs():
        try:
            where = resolve(spec.name, folder).location
        except ModelNotFoundError:
            where = "(not found)"
        typer.echo(f"{spec.name:42s} {spec.family:9s} in={spec.input_size:<5d} {where}\n    {spec.description}")


@models_app.command("tiny")
def models_tiny(
    directory: Path = typer.Argument(..., help="Folder to write the tiny models into."),
    seed: int = typer.Option(0, metavar="N", help="Random seed of the weights."),
) -> None:
    """Write random tiny SAM, CLIP, DINOv2 and Stable Diffusion models in their real formats."""
    from ..models.tiny import write_tiny_zoo

    for name, path in write_tiny_zoo(directory, seed).items():
        typer.echo(f"{name:16s} {path}")
    typer.echo(f"use them with --models {directory} (or USAM_RAY_MODELS={directory})")


@app.command()
def samples(
    directory: Path = typer.Argument(..., help="Folder to write the images into."),
    n: int = typer.Option(24, "--n", metavar="N", min=1, help="How many images."),
    seed: int = typer.Option(0, metavar="N", help="Random seed."),
) -> None:
    """Write a few procedural sample images (shapes on textured backgrounds) to try the pipeline on."""
    from ..data.samples import write_sample_images

    paths = write_sample_images(directory, n, seed)
    typer.echo(f"wrote {len(paths)} images to {directory}")


@toy_app.command("scenes")
def toy_scenes(
    directory: Path = typer.Argument(..., help="Folder to write (images/, masks/, classes.txt, instances.json)."),
    n: int = typer.Option(100, "--n", metavar="N", min=1, help="How many scenes."),
    seed: int = typer.Option(0, metavar="N", help="Random seed (same seed, same scenes)."),
    size: int = typer.Option(128, metavar="N", min=16, help="Image side in pixels."),
) -> None:
    """Write multi-object toy scenes with ground truth that `usam-ray eval --gt folder:DIR` reads."""
    from ..data.toyscenes import write_scene_dataset

    write_scene_dataset(directory, n, seed, size)
    typer.echo(f"wrote {n} scenes to {directory} (ground truth: folder:{directory})")


@toy_app.command("objects")
def toy_objects(
    directory: Path = typer.Argument(..., help="Folder to write DIR/<class>/*.png into."),
    per_class: int = typer.Option(20, "--per-class", metavar="N", min=1, help="Images per class."),
    seed: int = typer.Option(0, metavar="N", help="Random seed."),
    size: int = typer.Option(128, metavar="N", min=16, help="Image side in pixels."),
) -> None:
    """Write single-object toy images per class (the toy stand-in for "a photo of a {c}")."""
    from ..data.toyscenes import CLASSES, write_single_objects

    write_single_objects(directory, per_class, seed, size)
    typer.echo(f"wrote {per_class} images for each of {', '.join(CLASSES)} to {directory} (source classes:{directory})")


@toy_app.command("train-zoo")
def toy_train_zoo(
    out: Path = typer.Option(Path("toy-zoo"), "--out", "-o", metavar="DIR", help="Folder to write the trained models into."),
    quick: bool = typer.Option(False, "--quick", help="Seconds instead of minutes (for trying the command)."),
    dino_only: bool = typer.Option(False, "--dino-only", help="Only distil a new DINOv2, from the SAM and CLIP of "
                                   "--from (copied to --out unchanged): the last step of the full training alone."),
    clip_dense_only: bool = typer.Option(False, "--clip-dense-only", help="Only fine-tune the dense features of "
                                         "the CLIP of --from (its SAM and DINOv2 copied to --out unchanged)."),
    source: Optional[Path] = typer.Option(None, "--from", metavar="DIR", help="With --dino-only or --clip-dense-only: "
                                          "the zoo to start from [default: the shipped zoo]."),
) -> None:
    """Train the toy SAM, CLIP and DINOv2 on toy scenes (seeded) and print their quality figures.

    The shipped zoo (usam_ray/toyworld/zoo) was made by this command with the default settings,
    some steps redone alone later (`--dino-only`, `--clip-dense-only`: see its quality.json).
    """
    from ..models.registry import ModelNotFoundError, shipped_zoo
    from ..models.sam import CheckpointError
    from ..toyworld.zoo import TrainSettings, redistil_dino, refinetune_clip_dense, train_zoo

    settings = TrainSettings.quick() if quick else TrainSettings()
    log = lambda line: typer.echo(line, err=True)  # noqa: E731
    if dino_only and clip_dense_only:
        _fail("--dino-only and --clip-dense-only: one step at a time (run the second --from the first's --out)")
    if source is not None and not (dino_only or clip_dense_only):
        _fail("--from goes with --dino-only or --clip-dense-only (the full training makes its own models)")
    if dino_only or clip_dense_only:
        try:
            quality = (redistil_dino if dino_only else refinetune_clip_dense)(source or shipped_zoo(), out, settings,
                                                                              log=log)
        except (ValueError, ModelNotFoundError, CheckpointError) as exc:
            _fail(str(exc))
    else:
        quality = train_zoo(out, settings, log=log)
    _print_quality(quality)


@toy_app.command("check")
def toy_check(
    as_json: bool = typer.Option(False, "--json", help="Print the figures as one JSON object."),
    models: Optional[Path] = ModelsOpt,
    scenes: int = typer.Option(200, metavar="N", min=1, help="Held-out scenes to measure on."),
) -> None:
    """Measure the toy models on freshly generated held-out scenes and print their quality."""
    from ..models.registry import ModelNotFoundError, models_dir_from_env
    from ..models.sam import CheckpointError
    from ..toyworld.zoo import check_zoo

    try:
        quality = check_zoo(models_dir_from_env(models), scenes)
    except (ModelNotFoundError, CheckpointError) as exc:
        _fail(str(exc))
    if as_json:
        typer.echo(json.dumps(quality))
    else:
        _print_quality(quality)


def _print_quality(quality: dict) -> None:
    typer.echo(f"sam:toy   mean mask IoU (one interior point per instance)   {quality['sam_mean_iou']:.3f}")
    typer.echo(f"clip:toy  zero-shot crop accuracy (5 classes, chance 0.2)   {quality['clip_zero_shot_accuracy']:.3f}")
    typer.echo(f"clip:toy  dense (FMbSeg Stage 1's 16 crops): patch balanced accuracy (6 classes, chance 0.167)   "
               f"{quality['clip_dense_balanced_accuracy']:.3f}, class presence precision / recall   "
               f"{quality['clip_presence_precision']:.3f} / {quality['clip_presence_recall']:.3f}")
    typer.echo(f"dino:toy  class-balanced linear probe, patch accuracy / balanced   "
               f"{quality['dino_probe_patch_accuracy']:.3f} / {quality['dino_probe_balanced_accuracy']:.3f}")
    typer.echo(f"on {quality['held_out_scenes']} held-out scenes (seed {quality['held_out_seed']})")
    typer.echo("dino:toy was distilled without labels from the toy SAM's feature map (every patch) and the toy "
               "CLIP's embeddings of object cut-outs (patches an object covers), blind to colour (targets averaged "
               "over the six RGB channel orders, each image shown in a random one): see toyworld/toy_dino.py; "
               "clip:toy's patches and crop embeddings were then taught what they show (toyworld/toy_clip.py)")


@config_app.command("show")
def config_show(
    kind: Optional[str] = typer.Argument(
        None, metavar="[" + "|".join(CONFIGS) + "]",
        help="Which command's configuration [default: the kind --config holds, else embed]."),
    config: Optional[Path] = ConfigOpt,
    sets: Optional[List[str]] = SetOpt,
    schema: bool = typer.Option(False, "--schema", help="Print every field with its description instead (JSON schema)."),
) -> None:
    """Print a command's resolved configuration as YAML: defaults, then --config, then --set."""
    import yaml

    try:
        if kind is None:
            kind = detect_config_kind(config) if config is not None else "embed"
        if kind not in CONFIGS:
            raise ValueError(f"config show: no configuration {kind!r}; one of {', '.join(CONFIGS)}")
        model = CONFIGS[kind]
        if schema:
            typer.echo(json.dumps(model.model_json_schema(), indent=2))
            return
        cfg = load_config(model, config, sets)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    typer.echo(f"# usam-ray {kind} configuration")
    typer.echo(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False).rstrip())


def main(argv: Optional[List[str]] = None) -> int:
    """Console-script entry point: usage errors (a bad option value, a missing argument) are one
    line naming the option, like every other error."""
    # typer >= 0.29 vendors click: find its exception base through typer's public BadParameter
    import contextlib

    from ..progress import native_stderr_to_file

    click_error = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
    args = sys.argv[1:] if argv is None else list(argv)
    verbose = any(a in ("--verbose", "-v") for a in args[:1])
    # Ray's C++ core prints error-level lines straight to this process's stderr (fd 2); unless
    # --verbose they go to a file, and usam-ray's own messages to the terminal
    quiet = contextlib.nullcontext() if verbose or argv is not None else native_stderr_to_file()
    with quiet:
        return _run(args, click_error)


def _run(args: List[str], click_error: type) -> int:
    try:
        code = app(args=args, standalone_mode=False)
    except click_error as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # `usam-ray` alone: the help
            _err(exc.format_message())
            return 2
        ctx = getattr(exc, "ctx", None)
        where = ctx.command_path if ctx is not None else "usam-ray"
        _err(f"error: {' '.join(exc.format_message().split())} (see `{where} --help`)")
        return exc.exit_code
    except typer.Abort:
        _err("aborted")
        return 130
    return code if isinstance(code, int) else 0


from . import cluster  # noqa: E402  (its commands register themselves on ``app``)

COMMAND_MODULES = (cluster,)  # the modules whose commands extend ``app``

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
