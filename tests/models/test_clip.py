"""The CLIP loader: transformers ``from_pretrained`` on a local folder."""

import numpy as np
import torch

from usam_ray.models import resolve
from usam_ray.models.clip import load_clip


def test_tiny_clip_scores_text_against_images(zoo):
    clip = load_clip(resolve("clip:tiny", zoo))
    text = clip.tokenizer(["a photo of a dog", "a photo of a cat", "x"], padding=True, return_tensors="pt")
    assert text["input_ids"].shape[1] <= 77
    pixels = clip.processor(images=[np.zeros((40, 50, 3), np.uint8)] * 2, return_tensors="pt")["pixel_values"]
    assert pixels.shape == (2, 3, clip.image_size, clip.image_size)
    with torch.inference_mode():
        out = clip.model(**text, pixel_values=pixels)
    assert out.logits_per_image.shape == (2, 3)
    assert torch.isfinite(out.logits_per_image).all()
