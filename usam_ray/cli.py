"""The ``usam-ray`` command line. Each command builds a config and calls the library.

Importing this module does not import torch or ray: commands import what they need when run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from .config import EmbedConfig, EvalConfig, LabelConfig, RunConfig, TrainUsamConfig, load_config

app = typer.Typer(
    name="usam-ray",
    help="Label whole image datasets with semantic and instance masks for the classes you name, "
    "using Segment Anything on Ray.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
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

ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config file (see configs/).")
SetOpt = typer.Option(None, "--set", "-s", help="Override a field: dotted.key=value (repeatable).")
ModelsOpt = typer.Option(
    None, "--models", help="Folder of local weights overriding registry sources (default: $USAM_RAY_MODELS)."
)


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that are the user's input, reported as one line instead of a traceback."""
    from .data.shards import StageConflictError
    from .data.sources import SourceError
    from .models.registry import ModelNotFoundError
    from .models.sam import CheckpointError

    return (SourceError, ModelNotFoundError, CheckpointError, StageConflictError, ValueError, FileNotFoundError,
            KeyError)


def _overrides(sets: Optional[List[str]], **fields: object) -> list[str]:
    """``--set`` items plus the dedicated options given (those win)."""
    out = list(sets or [])
    for key, value in fields.items():
        if value is not None and value is not False:
            out.append(f"{key}={json.dumps(str(value)) if isinstance(value, Path) else json.dumps(value)}")
    return out


@app.command()
def embed(
    images: Optional[str] = typer.Option(
        None, "--images", "-i",
        help="Image source: a folder (recursive), classes:DIR (DIR/<class>/*), or Parquet file/folder with image bytes.",
    ),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory; shards go to OUT/embed/."),
    config: Optional[Path] = ConfigOpt,
    sets: Optional[List[str]] = SetOpt,
    models: Optional[Path] = ModelsOpt,
    retry_errors: bool = typer.Option(False, "--retry-errors", help="Try images that failed before again."),
) -> None:
    """Compute SAM mask embeddings (grid prompts → masks, mask tokens, scores) for every image.

    Re-running with the same configuration continues where the last run stopped.
    """
    from .pipelines.embed import run_embed

    try:
        cfg = load_config(EmbedConfig, config, _overrides(
            sets, images=images, out=out, **{"runtime.models_dir": models}, retry_errors=retry_errors))
        summary = run_embed(cfg, log=lambda line: typer.echo(line, err=True))
    except _user_errors() as exc:
        _fail(str(exc))
    typer.echo(
        f"embedded {summary.embedded} images, {summary.errors} errors this run "
        f"({summary.already_done} already done); {summary.out} now holds {summary.rows_total} images "
        f"and {summary.errors_total} error rows [fingerprint {summary.fingerprint}, {summary.seconds:.1f}s]"
    )
    if summary.errors_total:
        typer.echo(f"error rows: {summary.out}/errors/ (image id, path, stage, error type, message)")


@app.command()
def label(
    images: Optional[str] = typer.Option(None, "--images", "-i", help="Images to label (embedded first into OUT/../embed)."),
    from_embeddings: Optional[Path] = typer.Option(
        None, "--from-embeddings", help="Label stored embeddings (RUN/embed) without running SAM again."),
    head: Optional[Path] = typer.Option(None, "--head", help="Head directory (RUN/head) or a .pt checkpoint."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Labels directory (RUN/labels)."),
    classes: Optional[str] = typer.Option(None, "--classes", help="Expected classes (checked against the head)."),
    overlays: bool = typer.Option(False, "--overlays", help="Also write overlay PNGs."),
    config: Optional[Path] = ConfigOpt,
    sets: Optional[List[str]] = SetOpt,
    models: Optional[Path] = ModelsOpt,
) -> None:
    """Label every image: SAM masks → head → threshold → mask NMS → instances + semantic maps.

    Writes instances/part-*.parquet, coco_results.json, classes.json, semantic/<key>.png (and overlays/).
    Resumable; --from-embeddings relabels in seconds with a new head or thresholds.
    """
    from .pipelines.label import HeadMismatchError, run_label
    from .types import Ontology

    try:
        names = list(Ontology.from_names(classes).classes) if classes is not None else None
        cfg = load_config(LabelConfig, config, _overrides(
            sets, images=images, embeddings=from_embeddings, head=head, out=out, overlays=overlays,
            **{"runtime.models_dir": models}))
        summary = run_label(cfg, log=lambda line: typer.echo(line, err=True), classes=names)
    except (HeadMismatchError,) + _user_errors() as exc:
        _fail(str(exc))
    typer.echo(f"labelled {summary.images} images ({summary.instances} instances) this run; {summary.out} holds "
               f"{summary.images_total} semantic maps and {summary.instances_total} instances")


@app.command()
def synth(
    classes: str = typer.Option(..., "--classes", help='Classes, e.g. "person, bicycle, dog".'),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the Parquet image shards (RUN/synth)."),
    source: str = typer.Option("diffusion", help="diffusion or toy."),
    per_class: int = typer.Option(200, "--per-class", help="Images per class."),
    model: str = typer.Option("auto", help="Diffusion model (registry name, hub id or folder)."),
    template: str = typer.Option("a photo of a {c}", help="Prompt template."),
    steps: int = typer.Option(50, help="Sampling steps."),
    size: int = typer.Option(512, help="Image side."),
    seed: int = typer.Option(0, help="Base seed."),
    models: Optional[Path] = ModelsOpt,
) -> None:
    """Generate per-class training images (Stable Diffusion or the toy world) as Parquet shards; resumable."""
    from .pipelines.synth import run_synth
    from .types import Ontology

    try:
        names = list(Ontology.from_names(classes).classes)
        result = run_synth(names, source, per_class, out, model=model, models_dir=models, template=template,
                           steps=steps, size=size, seed=seed, log=lambda line: typer.echo(line, err=True))
    except _user_errors() as exc:
        _fail(str(exc))
    typer.echo(f"synth: {result['generated']} generated, {result['total']} images in {out}")


@app.command()
def run(
    config: Path = typer.Argument(..., help="Run config YAML (configs/voc.yaml, configs/coco80.yaml, …)."),
    sets: Optional[List[str]] = SetOpt,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory (overrides the config's)."),
    models: Optional[Path] = ModelsOpt,
) -> None:
    """synth → embed → train → label → eval, each stage resumed or skipped when already done."""
    from .pipelines.label import HeadMismatchError
    from .pipelines.run import run_pipeline

    try:
        cfg = load_config(RunConfig, config, _overrides(sets, out=out, **{"runtime.models_dir": models}))
        result = run_pipeline(cfg, log=lambda line: typer.echo(line, err=True))
    except (HeadMismatchError,) + _user_errors() as exc:
        _fail(str(exc))
    _print_run(result, cfg.out)


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="Run directory."),
    scenes: int = typer.Option(60, help="Toy scenes to label and score."),
    per_class: int = typer.Option(80, "--per-class", help="Toy training images per class."),
) -> None:
    """The whole job on the toy world with the shipped toy zoo, on a local Ray instance: toy objects →
    toy SAM embeddings → MIL + distillation heads → labels of fresh toy scenes → mIoU / mAP50, with baselines."""
    from .pipelines.run import run_demo

    result = run_demo(out, log=lambda line: typer.echo(line, err=True), scenes=scenes, per_class=per_class)
    _print_run(result, out)


def _print_run(result: dict, out) -> None:
    from .eval.report import headline
    from .pipelines.run import comparison_table

    if result.get("eval"):
        typer.echo(headline(result["eval"]))
    if result.get("comparison"):
        typer.echo("")
        typer.echo(comparison_table(result["comparison"]))
    typer.echo(f"\nlabels: {out}/labels (semantic/, instances/, coco_results.json), overlays: {out}/labels/overlays/")
    if result.get("eval"):
        typer.echo(f"report: {out}/eval/report.md")


@train_app.command("usam")
def train_usam_cmd(
    embeddings: Optional[Path] = typer.Option(None, "--embeddings", "-e", help="Embed stage directory (RUN/embed)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Head directory (RUN/head)."),
    classes: Optional[str] = typer.Option(None, "--classes", help='Classes in order, e.g. "person, bicycle, dog".'),
    config: Optional[Path] = ConfigOpt,
    sets: Optional[List[str]] = SetOpt,
) -> None:
    """Train U-SAM's MIL teacher, then the uncertainty-distilled student (TorchTrainer).

    Writes teacher.pt, student.pt, best.pt and head.json; prints every epoch's metrics.
    """
    from .train.usam import TrainDataError, train_usam
    from .types import Ontology

    try:
        names = list(Ontology.from_names(classes).classes) if classes is not None else None
        cfg = load_config(TrainUsamConfig, config, _overrides(sets, embeddings=embeddings, out=out, classes=names))
        if cfg.embeddings is None or cfg.out is None:
            raise ValueError("train usam needs --embeddings and --out")
        summary = train_usam(cfg, log=lambda line: typer.echo(line, err=True))
    except (TrainDataError,) + _user_errors() as exc:
        _fail(str(exc))
    typer.echo(f"heads written to {cfg.out}: teacher.pt, student.pt, best.pt (student epoch {summary['best']['epoch']})")


@app.command("eval")
def eval_(
    labels: Optional[Path] = typer.Option(None, "--labels", "-l", help="Labels directory (RUN/labels)."),
    gt: Optional[str] = typer.Option(
        None, "--gt", help="Ground truth: voc:ROOT[@split], coco:ANNOTATIONS.json[:IMAGES_DIR] or folder:ROOT."
    ),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Report directory (default: RUN/eval)."),
    config: Optional[Path] = ConfigOpt,
    sets: Optional[List[str]] = SetOpt,
) -> None:
    """Score labels against ground truth: mIoU, pixel accuracy, mAP50 — in parallel over shards.

    Writes report.json, report.md and a per-class IoU chart, and prints the headline table.
    """
    from .data.groundtruth import GroundTruthError
    from .eval.evaluate import EvalError, run_eval
    from .eval.labels import LabelsError

    try:
        cfg = load_config(EvalConfig, config, _overrides(sets, labels=labels, gt=gt, out=out))
        report = run_eval(cfg, log=lambda line: typer.echo(line, err=True))
    except (GroundTruthError, LabelsError, EvalError) + _user_errors() as exc:
        _fail(str(exc))
    from .eval.report import headline

    typer.echo(headline(report))
    typer.echo("reports: " + ", ".join(report["written"].values()))


@models_app.command("list")
def models_list(models: Optional[Path] = ModelsOpt) -> None:
    """List registered models and whether their weights are found."""
    from .models.registry import ModelNotFoundError, list_specs, models_dir_from_env, resolve

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
    seed: int = typer.Option(0, help="Random seed of the weights."),
) -> None:
    """Write random tiny SAM, CLIP, DINOv2 and Stable Diffusion models in their real formats."""
    from .models.tiny import write_tiny_zoo

    for name, path in write_tiny_zoo(directory, seed).items():
        typer.echo(f"{name:16s} {path}")
    typer.echo(f"use them with --models {directory} (or USAM_RAY_MODELS={directory})")


@app.command()
def samples(
    directory: Path = typer.Argument(..., help="Folder to write the images into."),
    n: int = typer.Option(24, "--n", help="How many images."),
    seed: int = typer.Option(0, help="Random seed."),
) -> None:
    """Write a few procedural sample images (shapes on textured backgrounds) to try the pipeline on."""
    from .data.samples import write_sample_images

    paths = write_sample_images(directory, n, seed)
    typer.echo(f"wrote {len(paths)} images to {directory}")


@toy_app.command("scenes")
def toy_scenes(
    directory: Path = typer.Argument(..., help="Folder to write (images/, masks/, classes.txt, instances.json)."),
    n: int = typer.Option(100, "--n", help="How many scenes."),
    seed: int = typer.Option(0, help="Random seed (same seed, same scenes)."),
    size: int = typer.Option(128, help="Image side in pixels."),
) -> None:
    """Write multi-object toy scenes with ground truth that `usam-ray eval --gt folder:DIR` reads."""
    from .toyworld.scenes import write_scene_dataset

    write_scene_dataset(directory, n, seed, size)
    typer.echo(f"wrote {n} scenes to {directory} (ground truth: folder:{directory})")


@toy_app.command("objects")
def toy_objects(
    directory: Path = typer.Argument(..., help="Folder to write DIR/<class>/*.png into."),
    per_class: int = typer.Option(20, "--per-class", help="Images per class."),
    seed: int = typer.Option(0, help="Random seed."),
    size: int = typer.Option(128, help="Image side in pixels."),
) -> None:
    """Write single-object toy images per class (the toy stand-in for "a photo of a {c}")."""
    from .toyworld.scenes import CLASSES, write_single_objects

    write_single_objects(directory, per_class, seed, size)
    typer.echo(f"wrote {per_class} images for each of {', '.join(CLASSES)} to {directory} (source classes:{directory})")


@toy_app.command("train-zoo")
def toy_train_zoo(
    out: Path = typer.Option(Path("toy-zoo"), "--out", "-o", help="Folder to write the trained models into."),
    quick: bool = typer.Option(False, "--quick", help="Seconds instead of minutes (for trying the command)."),
) -> None:
    """Train the toy SAM, CLIP and DINOv2 on toy scenes (seeded) and print their quality figures.

    The shipped zoo (usam_ray/toyworld/zoo) was made by this command with the default settings.
    """
    from .toyworld.zoo import TrainSettings, train_zoo

    quality = train_zoo(out, TrainSettings.quick() if quick else TrainSettings(),
                        log=lambda line: typer.echo(line, err=True))
    _print_quality(quality)


@toy_app.command("check")
def toy_check(
    as_json: bool = typer.Option(False, "--json", help="Print the figures as one JSON object."),
    models: Optional[Path] = ModelsOpt,
    scenes: int = typer.Option(200, help="Held-out scenes to measure on."),
) -> None:
    """Measure the toy models on freshly generated held-out scenes and print their quality."""
    from .models.registry import ModelNotFoundError, models_dir_from_env
    from .models.sam import CheckpointError
    from .toyworld.zoo import check_zoo

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
    typer.echo(f"dino:toy  linear-probe patch accuracy / balanced            "
               f"{quality['dino_probe_patch_accuracy']:.3f} / {quality['dino_probe_balanced_accuracy']:.3f}")
    typer.echo(f"on {quality['held_out_scenes']} held-out scenes (seed {quality['held_out_seed']})")


@config_app.command("show")
def config_show(
    config: Optional[Path] = ConfigOpt,
    sets: Optional[List[str]] = SetOpt,
    schema: bool = typer.Option(False, "--schema", help="Print every field with its description instead."),
) -> None:
    """Print the resolved embed configuration as YAML (or the field descriptions)."""
    import yaml

    if schema:
        typer.echo(json.dumps(EmbedConfig.model_json_schema(), indent=2))
        return
    try:
        cfg = load_config(EmbedConfig, config, sets)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    typer.echo(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
