"""Loading foundation models, nothing else: the registry and one module per family.

Importing this package does not import torch; each loader imports its framework when called.
"""

from .registry import (
    ModelNotFoundError,
    ModelSpec,
    ResolvedModel,
    get_spec,
    list_specs,
    models_dir_from_env,
    resolve,
    resolve_default,
)

__all__ = [
    "ModelNotFoundError", "ModelSpec", "ResolvedModel", "get_spec", "list_specs", "models_dir_from_env",
    "resolve", "resolve_default",
]
