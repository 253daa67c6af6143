"""Stable Diffusion (or any diffusers text-to-image pipeline) from one folder or hub id."""

from __future__ import annotations

from typing import Any

from ._hf import from_pretrained
from .registry import ResolvedModel


def load_diffusion(resolved: ResolvedModel, torch_dtype: Any = None) -> Any:
    """Load a diffusers pipeline with ``DiffusionPipeline.from_pretrained``.

    Args:
        resolved (ResolvedModel): the resolved ``diffusion:`` model.
        torch_dtype (torch.dtype | None): e.g. ``torch.float16`` on GPU; None keeps the saved dtype.

    Returns:
        diffusers.DiffusionPipeline on CPU; calling it with prompts returns ``.images`` (PIL).
    """
    from diffusers import DiffusionPipeline

    kwargs = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
    pipe = from_pretrained(DiffusionPipeline.from_pretrained, resolved, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe
