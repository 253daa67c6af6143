"""The SAM loader: segment_anything state dicts through ``build_sam``."""

import torch

from usam_ray.models import resolve
from usam_ray.models.sam import load_sam


def test_tiny_sam_loads_and_encodes(zoo):
    sam = load_sam(resolve("sam:tiny", zoo))
    with torch.inference_mode():
        feats = sam.image_encoder(torch.zeros(1, 3, 256, 256))
    assert feats.shape == (1, 64, 16, 16)
