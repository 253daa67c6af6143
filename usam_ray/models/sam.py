"""SAM: build segment_anything's model classes from an architecture dict and load a checkpoint."""

from __future__ import annotations

import json
import logging
from functools import partial
from pathlib import Path
from typing import Any

from .registry import SAM_MEAN, SAM_STD, ModelSpec, ResolvedModel

log = logging.getLogger(__name__)

ARCH_KEYS = (
    "img_size", "patch_size", "embed_dim", "depth", "num_heads", "window_size", "global_attn_indexes",
    "prompt_embed_dim", "decoder_depth", "decoder_mlp_dim", "decoder_heads", "iou_head_hidden_dim",
)


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used (unreadable, wrong format, wrong architecture)."""


def token_dim(arch: dict[str, Any]) -> int:
    """Floats in one mask-token embedding: SAM's 4 mask tokens (3 multimask outputs + 1) × the
    decoder width ``prompt_embed_dim`` (1024 for the official SAMs)."""
    return 4 * int(arch["prompt_embed_dim"])


def build_sam(arch: dict[str, Any], mean: tuple[float, float, float] = SAM_MEAN,
              std: tuple[float, float, float] = SAM_STD):
    """Build an untrained ``segment_anything.modeling.Sam`` from an architecture dict.

    Args:
        arch (dict): keys ARCH_KEYS: ``img_size`` (int) square input side, ``patch_size`` (int),
            ``embed_dim``/``depth``/``num_heads``/``window_size`` (int) of the ViT encoder,
            ``global_attn_indexes`` (list[int]), ``prompt_embed_dim`` (int) = decoder width,
            ``decoder_depth``/``decoder_mlp_dim``/``decoder_heads`` (int), ``iou_head_hidden_dim`` (int).
        mean, std (tuple[float, float, float]): pixel normalisation in 0…255 (the spec's).

    Returns:
        segment_anything.modeling.Sam in eval mode, on CPU.
    """
    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    missing = [k for k in ARCH_KEYS if k not in arch]
    if missing:
        raise CheckpointError(f"SAM architecture is missing {missing}")
    img, patch, dim = arch["img_size"], arch["patch_size"], arch["prompt_embed_dim"]
    grid = img // patch
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=arch["depth"], embed_dim=arch["embed_dim"], img_size=img, mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=arch["num_heads"], patch_size=patch,
            qkv_bias=True, use_rel_pos=True, global_attn_indexes=list(arch["global_attn_indexes"]),
            window_size=arch["window_size"], out_chans=dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=dim, image_embedding_size=(grid, grid), input_image_size=(img, img), mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=arch["decoder_depth"], embedding_dim=dim, mlp_dim=arch["decoder_mlp_dim"],
                num_heads=arch["decoder_heads"],
            ),
            transformer_dim=dim, iou_head_depth=3, iou_head_hidden_dim=arch["iou_head_hidden_dim"],
        ),
        pixel_mean=list(mean),
        pixel_std=list(std),
    )
    return sam.eval()


def arch_for(resolved: ResolvedModel) -> dict[str, Any]:
    """The architecture of a resolved SAM: the spec's, or the ``<checkpoint>.json`` beside the file."""
    if resolved.spec.arch:
        return dict(resolved.spec.arch)
    sidecar = Path(resolved.location).with_suffix(".json")
    if not sidecar.is_file():
        raise CheckpointError(f"{resolved.spec.name}: architecture file {sidecar} is missing")
    return json.loads(sidecar.read_text())["arch"]


def spec_with_arch(resolved: ResolvedModel) -> ModelSpec:
    """The spec with ``arch`` filled in and ``input_size`` taken from it (sidecar-described models)."""
    from dataclasses import replace

    arch = arch_for(resolved)
    return replace(resolved.spec, arch=arch, input_size=int(arch["img_size"]))


def load_sam(resolved: ResolvedModel, strict: bool = True):
    """Build SAM for ``resolved`` and load its checkpoint.

    The checkpoint is read with ``torch.load(map_location="cpu", weights_only=True)``. Missing and
    unexpected keys are logged; with ``strict`` any missing key is an error (a checkpoint for a
    different architecture), while unexpected keys only warn.

    Returns:
        segment_anything.modeling.Sam in eval mode, on CPU.

    Raises:
        CheckpointError: the file cannot be read as a state dict, or keys/shapes do not match.
    """
    import torch

    arch = arch_for(resolved)
    sam = build_sam(arch, resolved.spec.mean, resolved.spec.std)
    path = Path(resolved.location)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{resolved.spec.name}: cannot read checkpoint {path}: {exc}") from exc
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{resolved.spec.name}: {path} does not hold a state dict")
    try:
        result = sam.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # size mismatches
        raise CheckpointError(f"{resolved.spec.name}: {path} does not fit the architecture: {exc}") from exc
    if result.unexpected_keys:
        log.warning("%s: %d unexpected keys in %s: %s", resolved.spec.name, len(result.unexpected_keys), path,
                    result.unexpected_keys[:5])
    if result.missing_keys:
        msg = f"{resolved.spec.name}: {len(result.missing_keys)} keys missing from {path}: {result.missing_keys[:5]}"
        if strict:
            raise CheckpointError(msg)
        log.warning(msg)
    return sam.eval()


def save_sam(sam, arch: dict[str, Any], path: Path, extra: dict[str, Any] | None = None) -> None:
    """Write ``sam``'s state dict to ``path`` and its architecture to ``path.with_suffix('.json')``."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sam.state_dict(), path)
    path.with_suffix(".json").write_text(json.dumps({"arch": arch, **(extra or {})}, indent=2))
