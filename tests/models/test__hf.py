"""The shared Hugging Face loading path: offline errors name the model."""

import pytest

from usam_ray.models import resolve
from usam_ray.models.clip import load_clip


def test_hub_loader_offline_error_names_the_model(tmp_path):
    from usam_ray.models.registry import ModelNotFoundError

    with pytest.raises(ModelNotFoundError, match="clip:tiny"):
        load_clip(resolve("clip:tiny", None, explicit=tmp_path))  # an empty folder: no config.json
