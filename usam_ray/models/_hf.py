"""Shared helper for hub-family loaders: call ``from_pretrained`` with a clear error."""

from __future__ import annotations

from typing import Any, Callable

from .registry import ModelNotFoundError, ResolvedModel


def from_pretrained(loader: Callable[..., Any], resolved: ResolvedModel, **kwargs: Any) -> Any:
    """``loader(location, **kwargs)``; local folders load with ``local_files_only=True``. The
    library's per-load "Loading weights" bar is switched off (usam-ray shows its own progress).

    Raises:
        ModelNotFoundError: the hub is unreachable or the folder is incomplete; names the model.
    """
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        return loader(resolved.location, local_files_only=resolved.local, **kwargs)
    except (OSError, ValueError) as exc:
        where = f"folder {resolved.location}" if resolved.local else f"hub id {resolved.location}"
        raise ModelNotFoundError(
            f"{resolved.spec.name}: cannot load from {where}: {exc}. Offline? Download the model into "
            f"MODELS/{resolved.spec.local_name} and pass --models MODELS."
        ) from exc
