"""DINOv2 through transformers: backbone and image processor from one folder or hub id."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._hf import from_pretrained
from .registry import ResolvedModel


@dataclass
class DinoBundle:
    """A loaded DINOv2.

    Attributes:
        model (transformers.Dinov2Model): in eval mode, on CPU; ``last_hidden_state`` is
            (B, 1 + (S/p)², D) with the CLS token first.
        processor (transformers.BitImageProcessor): images → ``pixel_values`` (B, 3, S, S).
        patch_size (int): p, pixels per patch side.
    """

    model: Any
    processor: Any
    patch_size: int


def load_dino(resolved: ResolvedModel) -> DinoBundle:
    """Load DINOv2 with ``from_pretrained`` (a local folder or a hub id)."""
    from transformers import AutoImageProcessor, Dinov2Model

    model = from_pretrained(Dinov2Model.from_pretrained, resolved).eval()
    processor = from_pretrained(AutoImageProcessor.from_pretrained, resolved)
    return DinoBundle(model, processor, int(model.config.patch_size))
