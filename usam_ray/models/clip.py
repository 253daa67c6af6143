"""CLIP through transformers: model, tokenizer and image processor from one folder or hub id."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._hf import from_pretrained
from .registry import ResolvedModel


@dataclass
class ClipBundle:
    """A loaded CLIP.

    Attributes:
        model (transformers.CLIPModel): in eval mode, on CPU.
        tokenizer (transformers.CLIPTokenizer): text → ids (``model_max_length`` set).
        processor (transformers.CLIPImageProcessor): images → ``pixel_values`` (B, 3, S, S) float.
        image_size (int): S, the vision tower's input side.
    """

    model: Any
    tokenizer: Any
    processor: Any
    image_size: int


def load_clip(resolved: ResolvedModel) -> ClipBundle:
    """Load CLIP with ``from_pretrained`` (a local folder or a hub id)."""
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

    model = from_pretrained(CLIPModel.from_pretrained, resolved).eval()
    tokenizer = from_pretrained(CLIPTokenizer.from_pretrained, resolved)
    processor = from_pretrained(CLIPImageProcessor.from_pretrained, resolved)
    return ClipBundle(model, tokenizer, processor, int(model.config.vision_config.image_size))


def projected(output: Any):
    """The projected embedding from ``get_text_features``/``get_image_features``: a tensor in
    transformers 4.x, an output object whose ``pooler_output`` holds it in 5.x. (N, D)."""
    return output if hasattr(output, "norm") else output.pooler_output


def text_features(bundle: ClipBundle, prompts: list[str]):
    """Unit text features of ``prompts``: (K, E) float32 tensor (no grad)."""
    import torch

    with torch.inference_mode():
        ids = bundle.tokenizer(prompts, padding=True, return_tensors="pt")
        t = projected(bundle.model.get_text_features(**ids)).float()
    return t / t.norm(dim=-1, keepdim=True)


DENSE_VARIANTS = ("value", "last")


def dense_projected(model, pixel_values, variant: str = "value"):
    """``dense_features`` before normalisation and reshaping, differentiable (the toy CLIP trains
    through it): (B, g², E) patch projections and (B, E) class embeddings of a ``CLIPModel``."""
    if variant not in DENSE_VARIANTS:
        raise ValueError(f"dense CLIP variant must be one of {', '.join(DENSE_VARIANTS)}, not {variant!r}")
    vision, proj = model.vision_model, model.visual_projection
    out = vision(pixel_values=pixel_values, output_hidden_states=True)
    cls = proj(out.pooler_output)
    if variant == "value":
        x = out.hidden_states[-2]
        last = vision.encoder.layers[-1]
        x = x + last.self_attn.out_proj(last.self_attn.v_proj(last.layer_norm1(x)))
    else:
        x = out.last_hidden_state
    return proj(vision.post_layernorm(x[:, 1:])), cls


def dense_features(bundle: ClipBundle, pixel_values, variant: str = "value"):
    """Patch features in CLIP's joint space and each image's class embedding, in one forward.

    ``variant``: ``value`` (FMbSeg's fix): the last layer's input, plus only its attention's value
    path (each patch attends to itself: no mixing), no MLP, then the post-layernorm and the visual
    projection; ``last``: the last hidden state's patches through the post-layernorm and the
    projection (the paper's appendix: aligns *negatively* with the text).

    Args:
        bundle (ClipBundle): the model.
        pixel_values (torch.Tensor): (B, 3, S, S) normalised crops at the model's input size.

    Returns:
        patches (torch.Tensor): (B, g, g, E) unit patch features, g = S / patch size.
        cls (torch.Tensor): (B, E) unit class embeddings (what ``get_image_features`` gives).
    """
    import torch

    with torch.inference_mode():
        patches, cls = dense_projected(bundle.model, pixel_values, variant)
    b, n, e = patches.shape
    g = int(round(n ** 0.5))
    patches = patches.float().reshape(b, g, g, e)
    cls = cls.float()
    return patches / patches.norm(dim=-1, keepdim=True), cls / cls.norm(dim=-1, keepdim=True)
