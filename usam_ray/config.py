"""Run configuration: pydantic models, YAML files and ``--set`` overrides, fingerprints.

Every field carries a description (``usam-ray config show --schema`` prints them). A config is
built from defaults, then an optional YAML file, then ``--set dotted.key=value`` overrides, in that
order. The *fingerprint* of a stage is a stable hash of the fields that change its output plus the
fingerprints of the models it uses; runtime fields (batch sizes, pool sizes, addresses) are left
out so that a re-run on other hardware still resumes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
import re
from typing import Annotated, Any, Literal, Optional

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field


def _local_path(value: Any) -> Any:
    """Refuse a URI where a local (or mounted) path is needed: ``Path("s3://b/run")`` would silently
    become the local folder ``s3:/b/run``."""
    if isinstance(value, str) and re.match(r"^[A-Za-z][A-Za-z0-9+.\-]*://", value):
        raise ValueError(f"{value} is a URI; run directories, heads, labels and models must be a local or mounted "
                         "path (NFS, EFS, a PVC); URIs are read only for image sources (images)")
    return value


# a filesystem path that is not a URI (see _local_path)
LocalPath = Annotated[Path, BeforeValidator(_local_path)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SamConfig(_Section):
    """SAM model and automatic-prompting settings (what the embed stage computes)."""

    model: str = Field(
        "auto",
        description=(
            "Registry name of the SAM model: sam:vit_h, sam:vit_l, sam:vit_b, sam:tiny, or 'auto' "
            "(the models folder's declared default, else the largest official SAM found there)."
        ),
    )
    checkpoint: Optional[LocalPath] = Field(
        None, description="Explicit checkpoint file; overrides the models folder lookup."
    )
    points_per_side: int = Field(
        10, ge=1, le=128, description="Prompt grid side: points_per_side² point prompts per image (U-SAM: 10)."
    )
    mask_threshold: float = Field(0.0, description="Logit threshold that binarises SAM mask logits.")
    stability_offset: float = Field(
        1.0, gt=0, description="Offset of the stability score (IoU of masks thresholded at ±offset)."
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description=(
            "Compute precision of the image encoder and mask decoder: auto (bf16 on CUDA, fp32 on CPU), "
            "fp32, bf16 or fp16. Part of the fingerprint: fp32 and bf16 masks differ by a few pixels."
        ),
    )
    compile: bool = Field(
        False,
        description="torch.compile the image encoder: a minute or more of compiling per actor, then ~1.8x "
        "faster on GPUs (worth it for long runs). Not part of the fingerprint.",
    )


class DataConfig(_Section):
    """How source images are read and checked."""

    max_pixels: int = Field(
        100_000_000,
        gt=0,
        description="Images with more pixels than this become error rows instead of being decoded.",
    )
    extensions: list[str] = Field(
        default_factory=lambda: [".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"],
        description="File extensions (case-insensitive) taken as images when listing a folder.",
    )
    image_column: str = Field("image", description="Column with encoded image bytes in a Parquet source.")
    id_column: str = Field("image_id", description="Optional column with image ids in a Parquet source.")
    label_column: str = Field("labels", description="Optional column with labels (string or list) in a Parquet source.")


class RuntimeConfig(_Section):
    """Where and how wide to run; never part of a fingerprint."""

    address: Optional[str] = Field(
        None,
        description="Ray cluster to join (e.g. ray://HEAD:10001, HEAD:6379, or auto for the one `ray start` made here). "
        "None: $RAY_ADDRESS if set, else a private local instance for this command.",
    )
    models_dir: Optional[LocalPath] = Field(
        None, description="Folder of local checkpoints overriding the registry sources (also USAM_RAY_MODELS)."
    )
    batch_size: int = Field(4, ge=1, description="Images per model call (and per Ray Data batch).")
    shard_size: int = Field(64, ge=1, description="Images per written Parquet shard (at most).")
    num_actors: Optional[int] = Field(
        None, ge=1, description="Model actors. None: one per GPU, or sized from free CPUs on CPU-only clusters."
    )
    cpus_per_actor: float = Field(
        0.5, gt=0, description="CPUs each model actor reserves on CPU-only clusters (fractional keeps reads alive)."
    )
    actors_per_gpu: int = Field(
        1, ge=1,
        description="Model actors sharing each GPU (each reserves 1/k of it): 2 lets one actor's host work (RLE, "
        "Arrow) overlap another's GPU work, at twice the GPU memory.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Torch device for model actors.")
    stall_timeout_s: float = Field(
        1800.0, ge=0,
        description="Stop a stage as incomplete when no image has finished for this long (a lost node, a cluster "
        "short of what the plan reserved); what was written stays and a re-run continues. 0: wait forever.",
    )
    mask_chunk: int = Field(256, ge=1, description="At most this many masks upsampled to full image size at a time.")
    mask_pixel_budget: int = Field(
        1 << 26, ge=1,
        description="At most this many full-size mask pixels upsampled at a time (bounds memory on huge images: "
        "2**26 float32 logits are 256 MB).",
    )
    progress: bool = Field(True, description="Print progress lines while a stage runs.")


class EmbedConfig(_Section):
    """`usam-ray embed`: SAM mask embeddings of every image of a source, as Parquet shards."""

    images: Optional[str] = Field(
        None,
        description="Source: a folder (recursive), 'classes:DIR' (DIR/<class>/*.jpg), or Parquet file/folder with image bytes.",
    )
    out: Optional[LocalPath] = Field(None, description="Run directory; shards go to OUT/embed/.")
    retry_errors: bool = Field(False, description="Drop earlier error rows and try those images again.")
    sam: SamConfig = Field(default_factory=SamConfig, description="SAM settings.")
    data: DataConfig = Field(default_factory=DataConfig, description="Source reading settings.")
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig, description="Execution settings.")


def _parse_value(text: str) -> Any:
    """Parse an override's value as YAML (so ``16`` is an int, ``[a, b]`` a list, ``null`` None)."""
    return yaml.safe_load(text) if text != "" else ""


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``dotted.key=value`` overrides to a nested dict (in place) and return it.

    Raises:
        ValueError: an override without ``=`` or with an empty key.
    """
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set expects dotted.key=value, got {item!r}")
        key, value = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise ValueError(f"--set has an empty key in {item!r}")
        node = data
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ValueError(f"--set {key}: {part!r} is not a section")
            node = child
        node[parts[-1]] = _parse_value(value)
    return data


def load_config(
    model: type[BaseModel], path: Optional[Path] = None, overrides: Optional[list[str]] = None,
    options: Optional[dict[str, str]] = None,
) -> BaseModel:
    """Build a config of class ``model`` from defaults, an optional YAML file and overrides.

    Args:
        model (type[BaseModel]): the config class (e.g. EmbedConfig).
        path (Path | None): YAML file whose mapping is merged over the defaults.
        overrides (list[str] | None): ``dotted.key=value`` items applied last.
        options (dict[str, str] | None): dotted key → command-line option that sets it, so that an
            error names ``--per-class`` rather than ``per_class``.

    Raises:
        FileNotFoundError: the YAML file does not exist.
        ValueError: the YAML is not a mapping, or validation fails (one line naming each field or
            option; an unknown key with the nearest valid ones).
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"config file {path} must hold a mapping, not {type(loaded).__name__}")
        data = loaded
    apply_overrides(data, list(overrides or []))
    try:
        return model.model_validate(data)
    except Exception as exc:  # pydantic.ValidationError: one line naming each field (or option)
        where = f" (from {path})" if path is not None else ""
        errors = exc.errors() if hasattr(exc, "errors") else None
        text = describe_errors(model, errors, options or {}) if errors else str(exc)
        raise ValueError(f"invalid configuration{where}: {text}") from exc


def setting_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every dotted setting of a config class, sections expanded (``sam.points_per_side``, …)."""
    keys = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys += setting_keys(annotation, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def nearest_keys(model: type[BaseModel], key: str, n: int = 3) -> list[str]:
    """The valid settings of ``model`` closest to an unknown ``key`` (by spelling, then by section)."""
    import difflib

    keys = setting_keys(model)
    close = difflib.get_close_matches(key, keys, n=n, cutoff=0.6)
    if not close:  # same last part in another section, or the section's own keys
        last = key.rsplit(".", 1)[-1]
        close = difflib.get_close_matches(last, [k.rsplit(".", 1)[-1] for k in keys], n=n, cutoff=0.6)
        close = [k for k in keys if k.rsplit(".", 1)[-1] in close][:n]
    return close


def describe_errors(model: type[BaseModel], errors: list[dict], options: dict[str, str]) -> str:
    """Pydantic validation errors as one line: each field (or the command-line option that set it)
    with what is wrong and the value given; unknown keys with the nearest valid ones."""
    parts = []
    for err in errors:
        key = ".".join(str(p) for p in err.get("loc", ()))
        if err.get("type") == "extra_forbidden":
            near = nearest_keys(model, key)
            hint = f"; did you mean {' or '.join(near)}?" if near else ""
            parts.append(f"unknown setting {key!r}{hint} (`usam-ray config show` lists them)")
            continue
        base = ".".join(p for p in key.split(".") if not p.isdigit())  # export.formats.0 → export.formats
        name = options.get(key) or options.get(base) or key
        got = err.get("input")
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        parts.append(f"{name}: {err.get('msg', 'invalid')}{shown}")
    return "; ".join(parts)


def stable_hash(payload: Any, length: int = 16) -> str:
    """Hex sha256 prefix of ``payload`` serialised as canonical JSON (sorted keys, str fallback)."""
    blob = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def embed_fingerprint(cfg: EmbedConfig, sam_name: str, sam_fingerprint: str) -> str:
    """Fingerprint of the embed stage's output: SAM settings, read settings and the SAM weights.

    The source path, output path, runtime section, ``sam.compile`` and the unresolved
    ``sam.model``/``checkpoint`` are excluded: the same weights found another way, or compiled,
    give the same embeddings.
    """
    sam = cfg.sam.model_dump(mode="json", exclude={"model", "checkpoint", "compile"})
    data = cfg.data.model_dump(mode="json", exclude={"extensions"})
    return stable_hash({"stage": "embed", "sam": sam, "data": data, "model": [sam_name, sam_fingerprint]})


class EvalConfig(_Section):
    """`usam-ray eval`: score a labels directory against ground truth."""

    labels: Optional[LocalPath] = Field(None, description="Labels directory (semantic/<key>.png, optional instances).")
    gt: Optional[str] = Field(
        None, description="Ground truth: voc:ROOT[@split], coco:ANNOTATIONS.json[:IMAGES_DIR] or folder:ROOT."
    )
    out: Optional[LocalPath] = Field(None, description="Where report.json, report.md and the chart go (default LABELS/../eval).")
    shard_size: int = Field(64, ge=1, description="Images per evaluation task.")
    parallel: bool = Field(True, description="Evaluate in Ray tasks (False: one process, same result).")
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig, description="Execution settings (address).")


class TrainUsamConfig(_Section):
    """`usam-ray train usam`: the MIL teacher and the uncertainty-distilled student on embeddings."""

    embeddings: Optional[LocalPath] = Field(None, description="Embed stage directory (RUN/embed) of labelled images.")
    out: Optional[LocalPath] = Field(None, description="Head directory to write (RUN/head).")
    classes: Optional[list[str]] = Field(
        None, description="Classes to learn, in order; default: the sorted image labels found in the embeddings."
    )
    epochs: int = Field(10, ge=1, description="Epochs of each phase (teacher, then student).")
    batch_size: int = Field(64, ge=1, description="Images (bags) per step (paper: 64).")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate (paper: 1e-3).")
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="constant (the paper's) or cosine: annealed to 0 over each phase's steps."
    )
    a: float = Field(10.0, gt=0, description="MIL top-k divisor: k = max(1, ceil(d / a)) of d masks per image.")
    tau: Optional[float] = Field(None, description="Entropy threshold of the bad set; default 0.5·log C.")
    lambda_mil: float = Field(1.0, ge=0, description="Weight of the MIL loss in the student loss (λ1).")
    lambda_unc: float = Field(0.15, ge=0, description="Weight of the uncertainty loss in the student loss (λ2).")
    hidden: int = Field(512, ge=1, description="Hidden width of the 4-layer MLP head.")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout after each hidden layer.")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="Images (by id hash) held out to pick the best student.")
    seed: int = Field(0, description="Torch seed of the heads' initialisation.")
    workers: Optional[int] = Field(None, ge=1, description="Ray Train workers; default one per GPU, else 1.")
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig, description="Execution settings (address, device).")

    def tau_value(self, num_classes: int) -> float:
        """τ, defaulting to half the maximum entropy, 0.5·log C."""
        import math

        return self.tau if self.tau is not None else 0.5 * math.log(max(num_classes, 2))


class LabelSettings(_Section):
    """Thresholds that turn per-mask class probabilities into labels (``methods/usam.py``
    ``select_instances`` takes this section)."""

    score_threshold: float = Field(0.5, ge=0, le=1, description="Keep a mask when its top class probability ≥ this.")
    nms_iou: float = Field(0.5, gt=0, le=1, description="Class-agnostic mask NMS IoU threshold.")
    min_iou_pred: float = Field(0.0, ge=0, le=1, description="Drop masks whose SAM predicted IoU is below this.")
    min_area: int = Field(16, ge=0, description="Drop masks with fewer pixels.")


class FmbsegSettings(_Section):
    """FMbSeg's Stage 1 (CLIP + SAM pseudo labels) and Stage-2 inputs (``methods/fmbseg.py`` takes
    this section). Defaults are the paper's."""

    crops_per_side: int = Field(
        4, ge=1, le=8,
        description="The image is oversampled to crops_per_side × CLIP's input side and cut into crops_per_side² "
        "non-overlapping crops (paper: 4 → 16 crops of 336² from 1344²).",
    )
    clip_variant: Literal["value", "last"] = Field(
        "value",
        description="Dense CLIP patch features: value = the last layer's value path only (no attention mixing, no "
        "MLP; the paper's fix), last = the last hidden state projected (aligns negatively with the text).",
    )
    template: str = Field("a photo of a {c}", description="Text prompt of each class; {c} is the class name.")
    background_prompt: str = Field(
        "a photo of the background",
        description="Text of the background prototype (class 0) that Stage 2 aligns uncovered patches to.",
    )
    presence_threshold: int = Field(
        1, ge=0,
        description="A class is present when it wins more than this many crops (paper: T = 1). Ignored for images "
        "whose source gives image-level labels (the paper's semi-supervised variant).",
    )
    top_patches: int = Field(5, ge=1, description="Stage 1.1: point prompts per detected class (its most similar patches).")
    pred_iou_thresh: float = Field(
        0.97, ge=0, le=1, description="Stage 1.2: keep SAM automatic masks with predicted IoU ≥ this."
    )
    min_area_fraction: float = Field(
        0.001, ge=0, le=1, description="Stage 1.2: drop automatic masks smaller than this share of the image."
    )
    max_area_fraction: float = Field(
        0.9, gt=0, le=1, description="Stage 1.2: drop automatic masks larger than this share of the image."
    )
    nms_iou: float = Field(0.7, gt=0, le=1, description="Stage 1.2: mask NMS IoU among the automatic masks.")
    stage12_fraction: float = Field(
        0.75, ge=0, le=1,
        description="Training data: every Stage 1.1 mask plus this seeded random share of Stage 1.2 masks (paper: "
        "0.75; 1.0 hurts).",
    )


class ExportSection(_Section):
    """Extra label formats written beside ``coco_dataset.json`` (RLE) and ``coco_results.json``."""

    formats: list[Literal["coco-polygons", "label-studio"]] = Field(
        default_factory=list,
        description="coco-polygons: coco_dataset_polygons.json (contours, for CVAT's COCO importer); "
        "label-studio: label_studio_tasks.json (brush RLE pre-annotations) + label_studio_config.xml.",
    )
    image_url: str = Field(
        "/data/local-files/?d={file_name}",
        description="Label Studio task image URL; {file_name} is the image's path relative to its source "
        "(the default serves files under LOCAL_FILES_DOCUMENT_ROOT).",
    )


class LabelConfig(_Section):
    """`usam-ray label`: instances and semantic maps for every image, from a trained head."""

    images: Optional[str] = Field(None, description="Image source to label (embedded first into OUT/../embed).")
    embeddings: Optional[LocalPath] = Field(None, description="Label stored embeddings (RUN/embed) instead of images.")
    head: Optional[LocalPath] = Field(
        None, description="Head directory: RUN/head (`usam-ray train usam`) or RUN/align (`usam-ray train align`)."
    )
    method: Literal["usam", "fmbseg"] = Field(
        "usam", description="usam (SAM masks classified by the U-SAM head) or fmbseg (DINOv2 patches → alignment head)."
    )
    refined: bool = Field(False, description="fmbseg: relabel SAM's automatic masks by the majority of the base labels.")
    checkpoint: Literal["best", "student", "teacher", "align"] = Field(
        "best", description="Which head: best (validation), student (last) or teacher (MIL only); align (FMbSeg's last)."
    )
    retry_errors: bool = Field(False, description="fmbseg: drop earlier error rows and try those images again.")
    out: Optional[LocalPath] = Field(None, description="Labels directory (RUN/labels).")
    base_out: Optional[LocalPath] = Field(
        None, description="fmbseg --refined: also write the base labels here, from the same pass (for comparisons)."
    )
    overlays: bool = Field(False, description="Also write overlay PNGs (image + labels) for looking at.")
    export: ExportSection = Field(default_factory=ExportSection, description="Extra label formats.")
    label: LabelSettings = Field(default_factory=LabelSettings, description="Thresholds.")
    sam: SamConfig = Field(default_factory=SamConfig, description="SAM settings (when labelling images).")
    data: DataConfig = Field(default_factory=DataConfig, description="Source reading settings.")
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig, description="Execution settings.")


class UoSamSettings(_Section):
    """UO-SAM's refinement of coarse labels (``methods/uosam.py`` takes this section)."""

    use_global: bool = Field(True, description="Run the global region optimizer (SAM automatic masks vote) after LRO.")
    every_component: bool = Field(
        True,
        description="LRO prompts every connected component of a class region (at least min_component pixels); "
        "false: the paper's one prompt per class, for the component holding its positive point.",
    )
    min_component: int = Field(16, ge=1, description="LRO: smaller components of a class keep their coarse pixels.")
    background_votes: bool = Field(
        False,
        description="GRO: apply automatic masks whose majority is background (they paint over objects; the "
        "reference code does). False measured better on the toy world (bench/uosam.py).",
    )
    min_vote: float = Field(0.5, gt=0, le=1, description="GRO: relabel a mask when its majority class holds this share.")
    min_iou_pred: float = Field(0.5, ge=0, le=1, description="GRO: automatic masks with SAM predicted IoU below this are dropped.")
    min_area: int = Field(16, ge=0, description="GRO: automatic masks with fewer pixels are dropped.")
    nms_iou: float = Field(0.5, gt=0, le=1, description="GRO: mask NMS IoU among the automatic masks.")


class RefineConfig(_Section):
    """`usam-ray refine`: UO-SAM refinement of coarse semantic labels (ours or a folder of PNGs)."""

    labels: Optional[LocalPath] = Field(
        None, description="Coarse labels: a labels directory (semantic/ + classes.json) or a folder of label PNGs."
    )
    classes_file: Optional[LocalPath] = Field(
        None, description="Class names (one per line, background first) when LABELS has no classes.txt/json."
    )
    images: Optional[str] = Field(None, description="The images the labels belong to (folder, classes:DIR, Parquet, URI).")
    out: Optional[LocalPath] = Field(None, description="Labels directory to write the refined labels to.")
    lro_out: Optional[LocalPath] = Field(
        None, description="Also write the LRO-only labels here, from the same SAM pass (for comparisons)."
    )
    retry_errors: bool = Field(False, description="Drop earlier error rows and try those images again.")
    overlays: bool = Field(False, description="Also write overlay PNGs (image + labels) for looking at.")
    uosam: UoSamSettings = Field(default_factory=UoSamSettings, description="Refinement settings.")
    export: ExportSection = Field(default_factory=ExportSection, description="Extra label formats.")
    sam: SamConfig = Field(default_factory=SamConfig, description="SAM (its grid gives GRO's automatic masks).")
    data: DataConfig = Field(default_factory=DataConfig, description="Source reading settings.")
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig, description="Execution settings.")


class SynthSection(_Section):
    """Where U-SAM's per-class training images come from."""

    source: Literal["diffusion", "toy", "folder"] = Field(
        "diffusion", description="diffusion (text-to-image), toy (toy-world objects) or folder (class-per-folder images)."
    )
    model: str = Field("auto", description="Diffusion model (registry name, hub id or folder); auto: SD v1-4.")
    per_class: int = Field(200, ge=1, description="Images per class (paper: 200).")
    template: str = Field("a photo of a {c}", description="Prompt template; {c} is the class name.")
    steps: int = Field(50, ge=1, description="Diffusion sampling steps.")
    guidance: float = Field(7.5, ge=0, description="Classifier-free guidance scale.")
    size: int = Field(512, ge=16, description="Generated image side in pixels.")
    seed: int = Field(0, description="Base seed; each image's seed derives from (class, index).")
    folder: Optional[LocalPath] = Field(None, description="Class-per-folder root (source folder).")


class SynthConfig(_Section):
    """`usam-ray synth`: per-class training images as Parquet image shards."""

    classes: Optional[str] = Field(None, description='The classes, comma-separated: "person, bicycle, dog".')
    out: Optional[LocalPath] = Field(None, description="Folder for the Parquet image shards (RUN/synth).")
    synth: SynthSection = Field(default_factory=SynthSection, description="Generation settings.")
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig, description="Execution settings.")


class PseudoConfig(_Section):
    """`usam-ray pseudo`: FMbSeg Stage 1 pseudo labels (CLIP + SAM) of every image of a source, and
    each image's DINOv2 patch features for Stage 2, as Parquet shards (RUN/pseudo, RUN/features)."""

    images: Optional[str] = Field(
        None, description="Source (folder, classes:DIR or Parquet); image-level labels, where it has them, replace "
        "CLIP's presence test.",
    )
    out: Optional[LocalPath] = Field(
        None, description="Pseudo-label folder (RUN/pseudo); the DINOv2 features go beside it (RUN/features)."
    )
    classes: Optional[str] = Field(None, description='The classes, comma-separated: "person, bicycle, dog".')
    retry_errors: bool = Field(False, description="Drop earlier error rows and try those images again.")
    clip_model: str = Field("auto", description="CLIP (registry name or hub id; paper: ViT-L/14 @ 336).")
    dino_model: str = Field("auto", description="DINOv2 (registry name or hub id; paper: ViT-L/14 at 518²).")
    fmbseg: FmbsegSettings = Field(default_factory=FmbsegSettings, description="Stage 1 settings.")
    sam: SamConfig = Field(default_factory=SamConfig, description="SAM settings (points_per_side: the 1.2 grid).")
    data: DataConfig = Field(default_factory=DataConfig, description="Source reading settings.")
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig, description="Execution settings.")


def pseudo_fingerprint(cfg: PseudoConfig, classes: list[str], models: dict[str, str]) -> str:
    """Fingerprint of the pseudo stage's output: classes, Stage 1 and SAM settings, read settings and
    the three models' weights (source, output, runtime and ``sam.compile`` excluded). The Stage 1.2
    share only decides what Stage 2 trains on, so it is excluded too."""
    return stable_hash({
        "stage": "pseudo", "classes": classes, "fmbseg": cfg.fmbseg.model_dump(mode="json", exclude={"stage12_fraction"}),
        "sam": cfg.sam.model_dump(mode="json", exclude={"model", "checkpoint", "compile"}),
        "data": cfg.data.model_dump(mode="json", exclude={"extensions"}), "models": models,
    })


class TrainAlignConfig(_Section):
    """`usam-ray train align`: FMbSeg's Stage 2 — the alignment module from cached DINOv2 patch
    features (RUN/features) into CLIP's text space, trained with TSupCon on Stage 1's pseudo
    labels (RUN/pseudo)."""

    pseudo: Optional[LocalPath] = Field(None, description="Pseudo-label folder (RUN/pseudo) written by `usam-ray pseudo`.")
    features: Optional[LocalPath] = Field(None, description="DINOv2 feature folder; default: RUN/features beside --pseudo.")
    out: Optional[LocalPath] = Field(None, description="Head directory to write (RUN/align).")
    kind: Literal["block", "mlp", "linear"] = Field(
        "block", description="Alignment module: block (one transformer block; the paper's), mlp or linear (its ablation)."
    )
    epochs: int = Field(10, ge=1, description="Epochs (paper: 10).")
    batch_size: int = Field(5, ge=1, description="Images per step; TSupCon contrasts all their patches (paper: 5).")
    lr: float = Field(0.1, gt=0, description="SGD learning rate, annealed to 0 by a cosine schedule.")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum.")
    weight_decay: float = Field(1e-4, ge=0, description="SGD weight decay.")
    temperature: float = Field(0.1, gt=0, description="TSupCon temperature τ.")
    loss: Literal["tsupcon", "tsupcon_balanced"] = Field(
        "tsupcon",
        description="tsupcon: the paper's Eq. 1–4, text terms weigh K/(B·N+K); tsupcon_balanced: the text terms' "
        "mean weighs as much as the patch terms' (learns where the paper's form collapses: README, FMbSeg).",
    )
    heads: int = Field(4, ge=1, description="Attention heads of the block (DINOv2's width must divide by it).")
    mlp_ratio: float = Field(4.0, gt=0, description="MLP width over DINOv2's width (block and mlp kinds).")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="Images (by id hash) held out to pick the best epoch.")
    seed: int = Field(0, description="Seed of the initialisation, the epoch order and the Stage 1.2 share.")
    workers: Optional[int] = Field(None, ge=1, description="Ray Train workers; default one per GPU, else 1.")
    fmbseg: FmbsegSettings = Field(
        default_factory=FmbsegSettings,
        description="template and background_prompt (the text prototypes) and stage12_fraction (the training data).",
    )
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig, description="Execution settings (address, device).")


class RunConfig(_Section):
    """`usam-ray run`: each method's stages (U-SAM: synth → embed → train → label; FMbSeg: pseudo →
    train align → label) → eval, each stage resumed or skipped."""

    out: Optional[LocalPath] = Field(None, description="Run directory.")
    methods: list[Literal["usam", "fmbseg"]] = Field(
        default_factory=lambda: ["usam"], min_length=1,
        description="Methods to run, in order; the first writes RUN/labels and RUN/eval, each other one RUN/<method>/.",
    )
    classes: Optional[str] = Field(None, description='The classes, comma-separated: "person, bicycle, dog".')
    images: Optional[str] = Field(None, description="The images to label (folder, classes:DIR or Parquet).")
    gt: Optional[str] = Field(None, description="Ground truth for evaluation (voc:…, coco:…, folder:…); none: skip.")
    synth: SynthSection = Field(default_factory=SynthSection, description="Training images.")
    sam: SamConfig = Field(default_factory=SamConfig, description="SAM settings (training and labelling).")
    data: DataConfig = Field(default_factory=DataConfig, description="Source reading settings.")
    train: TrainUsamConfig = Field(default_factory=TrainUsamConfig, description="Head training (paths filled in).")
    label: LabelSettings = Field(default_factory=LabelSettings, description="Labelling thresholds.")
    checkpoint: Literal["best", "student", "teacher"] = Field("best", description="Head used for the labels.")
    overlays: bool = Field(True, description="Write overlay PNGs next to the labels.")
    export: ExportSection = Field(default_factory=ExportSection, description="Extra label formats.")
    baselines: bool = Field(
        False, description="Also label and score the other rows of the comparison: MIL-only and SAM+CLIP (with usam), "
        "Stage 1 and the other of base/refined (with fmbseg), all-background.")
    clip_model: str = Field("auto", description="CLIP for FMbSeg and the SAM+CLIP baseline (registry name or hub id).")
    dino_model: str = Field("auto", description="DINOv2 for FMbSeg (registry name or hub id).")
    fmbseg: FmbsegSettings = Field(default_factory=FmbsegSettings, description="FMbSeg Stage 1 (and its training share).")
    align: TrainAlignConfig = Field(default_factory=TrainAlignConfig, description="FMbSeg Stage 2 training (paths filled in).")
    refined: bool = Field(True, description="FMbSeg's labels refined by SAM's automatic masks (false: the base labels).")
    refine: bool = Field(
        False, description="End with UO-SAM: refine each method's (base) labels with SAM into <method>_uosam rows; the "
        "first method's go to RUN/refined. With baselines also the LRO-only rows (<method>_uosam_lro).")
    coarse_labels: Optional[LocalPath] = Field(
        None, description="With refine: also refine and score this folder of coarse labels (rows coarse, "
        "coarse_uosam_lro, coarse_uosam), e.g. an unsupervised segmenter's output.")
    uosam: UoSamSettings = Field(default_factory=UoSamSettings, description="UO-SAM refinement settings.")
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig, description="Execution settings.")


class DemoConfig(_Section):
    """`usam-ray demo`: the whole job on the toy world (see ``workflows.py`` demo_config)."""

    out: LocalPath = Field(Path("runs/demo"), description="Run directory.")
    scenes: int = Field(60, ge=1, le=100_000, description="Held-out toy scenes to label and score.")
    per_class: int = Field(80, ge=1, le=100_000, description="Toy training images per class.")
    seed: int = Field(777, description="Seed of the held-out scenes (the training images use synth.seed 0).")
    refine: bool = Field(True, description="Refine with UO-SAM: U-SAM's and FMbSeg's labels and coarsened ground truth.")
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig, description="Execution settings.")


#: `usam-ray config show KIND`: every command's configuration class.
CONFIGS: dict[str, type[BaseModel]] = {
    "embed": EmbedConfig, "label": LabelConfig, "train": TrainUsamConfig, "eval": EvalConfig,
    "synth": SynthConfig, "run": RunConfig, "demo": DemoConfig, "pseudo": PseudoConfig, "align": TrainAlignConfig,
    "refine": RefineConfig,
}


def detect_config_kind(path: Path) -> str:
    """The first of ``CONFIGS`` (in order) that a YAML file validates as.

    Raises:
        ValueError: it fits none (the run config's errors are given).
    """
    for kind, model in CONFIGS.items():
        try:
            load_config(model, path)
            return kind
        except ValueError:
            continue
    load_config(RunConfig, path)  # raises with the run config's one-line message
    return "run"
