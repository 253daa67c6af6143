"""The model registry: names → specs (weights source + preprocessing), and their resolution.

A name is ``family:variant``. Families: ``sam`` (segment_anything checkpoints), ``clip`` and
``dino`` (transformers folders or hub ids), ``diffusion`` (diffusers folders or hub ids).
A *models folder* (``--models DIR`` / ``USAM_RAY_MODELS``) holds weights under each spec's
``local_name`` and overrides the default sources; it may declare default models per family in
``usam-ray-models.json`` (``{"defaults": {"sam": "sam:tiny", ...}}``).

Resolution never touches a network and never builds a model: it finds where the weights are and
fails early, before any Ray work, with a message that says where to get them.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

Family = Literal["sam", "clip", "dino", "diffusion"]
FAMILIES: tuple[str, ...] = ("sam", "clip", "dino", "diffusion")
MANIFEST = "usam-ray-models.json"
MODELS_ENV = "USAM_RAY_MODELS"

SAM_MEAN = (123.675, 116.28, 103.53)
SAM_STD = (58.395, 57.12, 57.375)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ModelNotFoundError(FileNotFoundError):
    """Weights for a registered model could not be found; the message says where to get them."""


@dataclass(frozen=True)
class ModelSpec:
    """A registered model.

    Attributes:
        name (str): registry name, ``family:variant``.
        family (str): one of FAMILIES.
        local_name (str): file (sam) or folder (others) name inside a models folder.
        source (str | None): where the weights come from by default: a download URL (sam) or a hub
            id (others); None for models that only exist locally (tiny, toy).
        input_size (int): side of the square model input in pixels (longest side for SAM).
        mean (tuple[float, float, float]): per-channel mean, in the pixel scale the model expects.
        std (tuple[float, float, float]): per-channel std, same scale.
        arch (dict): architecture arguments (sam) needed to build the network before loading.
        description (str): one line for ``usam-ray models list``.
    """

    name: str
    family: str
    local_name: str
    source: Optional[str]
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    arch: dict = field(default_factory=dict)
    description: str = ""


@dataclass(frozen=True)
class ResolvedModel:
    """A spec plus where its weights are.

    Attributes:
        spec (ModelSpec): the registered spec.
        location (str): a local file/folder path, or a hub id (only for hub families).
        local (bool): whether ``location`` is on disk.
    """

    spec: ModelSpec
    location: str
    local: bool

    def fingerprint(self) -> str:
        """Content fingerprint of the weights (see ``weights_fingerprint``), or the hub id."""
        if not self.local:
            return f"hub:{self.location}"
        return weights_fingerprint(Path(self.location))


_SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"


def _sam_arch(embed_dim: int, depth: int, heads: int, global_attn: list[int]) -> dict:
    return {
        "img_size": 1024, "patch_size": 16, "embed_dim": embed_dim, "depth": depth, "num_heads": heads,
        "window_size": 14, "global_attn_indexes": global_attn, "prompt_embed_dim": 256,
        "decoder_depth": 2, "decoder_mlp_dim": 2048, "decoder_heads": 8, "iou_head_hidden_dim": 256,
    }


def _builtin_specs() -> dict[str, ModelSpec]:
    specs = [
        ModelSpec("sam:vit_h", "sam", "sam_vit_h_4b8939.pth", _SAM_URL + "sam_vit_h_4b8939.pth", 1024,
                  SAM_MEAN, SAM_STD, _sam_arch(1280, 32, 16, [7, 15, 23, 31]), "SAM ViT-H (636 M params)"),
        ModelSpec("sam:vit_l", "sam", "sam_vit_l_0b3195.pth", _SAM_URL + "sam_vit_l_0b3195.pth", 1024,
                  SAM_MEAN, SAM_STD, _sam_arch(1024, 24, 16, [5, 11, 17, 23]), "SAM ViT-L (308 M params)"),
        ModelSpec("sam:vit_b", "sam", "sam_vit_b_01ec64.pth", _SAM_URL + "sam_vit_b_01ec64.pth", 1024,
                  SAM_MEAN, SAM_STD, _sam_arch(768, 12, 12, [2, 5, 8, 11]), "SAM ViT-B (91 M params)"),
        ModelSpec("sam:tiny", "sam", "sam_tiny.pth", None, 256, SAM_MEAN, SAM_STD, {},
                  "random tiny SAM written by `usam-ray models tiny` (arch in sam_tiny.json)"),
        ModelSpec("sam:toy", "sam", "sam_toy.pth", None, 128, SAM_MEAN, SAM_STD, {},
                  "tiny SAM trained on the toy world, shipped with the package (arch in sam_toy.json)"),
        ModelSpec("clip:toy", "clip", "clip-toy", None, 64, CLIP_MEAN, CLIP_STD, {},
                  "tiny CLIP trained on the toy world, shipped with the package"),
        ModelSpec("dino:toy", "dino", "dinov2-toy", None, 128, IMAGENET_MEAN, IMAGENET_STD, {},
                  "tiny DINOv2 distilled from the toy SAM and CLIP on the toy world, shipped with the package"),
        ModelSpec("clip:tiny", "clip", "clip-tiny", None, 32, CLIP_MEAN, CLIP_STD, {},
                  "random tiny CLIP (transformers folder) written by `usam-ray models tiny`"),
        ModelSpec("dino:tiny", "dino", "dinov2-tiny", None, 56, IMAGENET_MEAN, IMAGENET_STD, {},
                  "random tiny DINOv2 (transformers folder) written by `usam-ray models tiny`"),
        ModelSpec("diffusion:tiny", "diffusion", "sd-tiny", None, 32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), {},
                  "random tiny Stable Diffusion (diffusers folder) written by `usam-ray models tiny`"),
        ModelSpec("clip:openai/clip-vit-base-patch16", "clip", "openai/clip-vit-base-patch16",
                  "openai/clip-vit-base-patch16", 224, CLIP_MEAN, CLIP_STD, {}, "CLIP ViT-B/16 (FMbSeg)"),
        ModelSpec("dino:facebook/dinov2-base", "dino", "facebook/dinov2-base", "facebook/dinov2-base", 224,
                  IMAGENET_MEAN, IMAGENET_STD, {}, "DINOv2 ViT-B/14 (FMbSeg)"),
        ModelSpec("clip:openai/clip-vit-large-patch14-336", "clip", "openai/clip-vit-large-patch14-336",
                  "openai/clip-vit-large-patch14-336", 336, CLIP_MEAN, CLIP_STD, {},
                  "CLIP ViT-L/14 @ 336 (FMbSeg's paper setting: 16 crops of 336² → a 96×96 dense map)"),
        ModelSpec("dino:facebook/dinov2-large", "dino", "facebook/dinov2-large", "facebook/dinov2-large", 518,
                  IMAGENET_MEAN, IMAGENET_STD, {}, "DINOv2 ViT-L/14 at 518² (FMbSeg's paper setting: 37×37 patches)"),
        ModelSpec("diffusion:CompVis/stable-diffusion-v1-4", "diffusion", "CompVis/stable-diffusion-v1-4",
                  "CompVis/stable-diffusion-v1-4", 512, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), {},
                  "Stable Diffusion v1-4 (U-SAM's synthetic images)"),
    ]
    return {s.name: s for s in specs}


REGISTRY_DEFAULTS: dict[str, str] = {
    "clip": "clip:openai/clip-vit-base-patch16",
    "dino": "dino:facebook/dinov2-base",
    "diffusion": "diffusion:CompVis/stable-diffusion-v1-4",
}
SAM_PREFERENCE = ("sam:vit_h", "sam:vit_l", "sam:vit_b")


def list_specs() -> list[ModelSpec]:
    """Every registered spec, in registry order."""
    return list(_builtin_specs().values())


def get_spec(name: str) -> ModelSpec:
    """The spec for ``name``. ``clip:``/``dino:``/``diffusion:`` accept any hub id or folder.

    Raises:
        KeyError: unknown family, or an unknown ``sam:`` variant (message lists the known ones).
    """
    specs = _builtin_specs()
    if name in specs:
        return specs[name]
    family, _, variant = name.partition(":")
    if family not in FAMILIES or not variant:
        raise KeyError(f"model name {name!r} must be family:variant with family in {FAMILIES}")
    if family == "sam":
        known = [n for n in specs if n.startswith("sam:")]
        raise KeyError(f"unknown SAM model {name!r}; registered: {known}")
    like = specs[REGISTRY_DEFAULTS[family]]
    return ModelSpec(name, family, variant, variant, like.input_size, like.mean, like.std, {},
                     f"{family} model from {variant}")


def models_dir_from_env(models_dir: Optional[Path]) -> Optional[Path]:
    """The models folder to use: the explicit one, else ``$USAM_RAY_MODELS``, else None.

    Raises:
        ModelNotFoundError: the folder given does not exist.
    """
    chosen = models_dir if models_dir is not None else os.environ.get(MODELS_ENV) or None
    if chosen is None:
        return None
    path = Path(chosen).expanduser()
    if not path.is_dir():
        raise ModelNotFoundError(f"models folder {path} does not exist (from --models or ${MODELS_ENV})")
    return path


def read_manifest(models_dir: Optional[Path]) -> dict:
    """The models folder's ``usam-ray-models.json`` (``{}`` when absent)."""
    if models_dir is None or not (models_dir / MANIFEST).is_file():
        return {}
    return json.loads((models_dir / MANIFEST).read_text())


def _local_candidates(spec: ModelSpec, models_dir: Path) -> list[Path]:
    name = spec.local_name
    return [models_dir / name, models_dir / name.replace("/", "--")]


def resolve(name: str, models_dir: Optional[Path] = None, explicit: Optional[Path] = None) -> ResolvedModel:
    """Find the weights of model ``name``.

    Order: ``explicit`` path; ``name``'s variant if it is itself an existing folder (hub families);
    the models folder (``local_name`` or ``local_name`` with ``/`` → ``--``); the default source
    (hub id) for hub families.

    Raises:
        ModelNotFoundError: nothing found; the message names the file to download and where.
    """
    spec = get_spec(name)
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.exists():
            raise ModelNotFoundError(f"{name}: checkpoint {path} does not exist{_where_to_get(spec)}")
        return ResolvedModel(spec, str(path), True)
    if spec.family != "sam" and spec.source is not None and Path(spec.source).expanduser().is_dir():
        return ResolvedModel(spec, str(Path(spec.source).expanduser()), True)  # `clip:/path/to/folder`
    for folder in (models_dir, shipped_zoo() if spec.name.endswith(":toy") else None):
        if folder is not None:
            for cand in _local_candidates(spec, folder):
                if cand.exists():
                    return ResolvedModel(spec, str(cand), True)
    if spec.family != "sam" and spec.source is not None:
        return ResolvedModel(spec, spec.source, False)
    looked = f" in models folder {models_dir}" if models_dir is not None else " (no models folder given: --models DIR)"
    raise ModelNotFoundError(f"{name}: weights {spec.local_name!r} not found{looked}{_where_to_get(spec)}")


def shipped_zoo() -> Path:
    """The folder of toy models shipped inside the package (``usam_ray/toyworld/zoo``)."""
    return Path(__file__).resolve().parent.parent / "toyworld" / "zoo"


def _where_to_get(spec: ModelSpec) -> str:
    if spec.family == "sam" and spec.source:
        return f"; download the official checkpoint {spec.source} into your models folder"
    if spec.source:
        return f"; download {spec.source} from the Hugging Face hub into MODELS/{spec.local_name}"
    if spec.name.endswith(":toy"):
        return f"; the toy zoo ships in {shipped_zoo()}: rebuild it with `usam-ray toy train-zoo`"
    return "; write the tiny models with `usam-ray models tiny DIR` and pass --models DIR"


def resolve_default(family: str, name: str, models_dir: Optional[Path], explicit: Optional[Path] = None) -> ResolvedModel:
    """Resolve ``name``, where ``"auto"`` means the models folder's declared default for ``family``,
    else (sam) the largest official SAM found, else (hub families) the registry default.

    Raises:
        ModelNotFoundError: ``auto`` found nothing; the message lists what was looked for.
    """
    if name != "auto":
        return resolve(name, models_dir, explicit)
    if explicit is not None:
        raise ValueError(f"{family}.checkpoint is set but {family}.model is 'auto': name the model it holds")
    declared = read_manifest(models_dir).get("defaults", {}).get(family)
    if declared:
        return resolve(declared, models_dir)
    if family == "sam":
        for candidate in SAM_PREFERENCE:
            try:
                return resolve(candidate, models_dir)
            except ModelNotFoundError:
                continue
        files = ", ".join(get_spec(n).local_name for n in SAM_PREFERENCE)
        looked = f"models folder {models_dir}" if models_dir is not None else "no models folder (--models DIR)"
        raise ModelNotFoundError(
            f"no SAM checkpoint found: looked for {files} in {looked}; download one from {_SAM_URL}"
            " or write tiny test models with `usam-ray models tiny DIR`"
        )
    return resolve(REGISTRY_DEFAULTS[family], models_dir)


def weights_fingerprint(path: Path, sample: int = 4 << 20) -> str:
    """Fingerprint of a weights file or folder: sha256 over each file's relative name, size and
    its first and last ``sample`` bytes (whole file when smaller). Fast on multi-GB checkpoints;
    any retrained or re-saved checkpoint changes it in practice."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        size = f.stat().st_size
        h.update(f"{f.relative_to(path) if path.is_dir() else f.name}:{size}".encode())
        with f.open("rb") as fh:
            h.update(fh.read(sample))
            if size > 2 * sample:
                fh.seek(size - sample)
                h.update(fh.read(sample))
            elif size > sample:
                h.update(fh.read())
    return h.hexdigest()[:16]
