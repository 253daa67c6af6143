"""The Stable Diffusion loader (diffusers)."""

import numpy as np
import torch

from usam_ray.models import resolve
from usam_ray.models.diffusion import load_diffusion


def test_tiny_diffusion_generates_reproducibly(zoo):
    pipe = load_diffusion(resolve("diffusion:tiny", zoo))
    run = lambda: pipe(["a photo of a dog"], num_inference_steps=2, height=32, width=32,
                       generator=torch.Generator().manual_seed(3), output_type="np").images
    a, b = run(), run()
    assert a.shape == (1, 32, 32, 3)
    np.testing.assert_array_equal(a, b)
