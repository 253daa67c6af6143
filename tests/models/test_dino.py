"""The DINOv2 loader."""

import numpy as np
import torch

from usam_ray.models import resolve
from usam_ray.models.dino import load_dino


def test_tiny_dino_gives_patch_features(zoo):
    dino = load_dino(resolve("dino:tiny", zoo))
    pixels = dino.processor(images=[np.zeros((70, 60, 3), np.uint8)], return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        hidden = dino.model(pixel_values=pixels).last_hidden_state
    side = pixels.shape[-1] // dino.patch_size
    assert hidden.shape == (1, 1 + side * side, 32)
