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
