"""Every registered tiny model loads through the real loader and runs on a tiny input."""

import numpy as np
import pytest
import torch

from usam_ray.models import resolve
from usam_ray.models.clip import load_clip
from usam_ray.models.diffusion import load_diffusion
from usam_ray.models.dino import load_dino
from usam_ray.models.registry import list_specs
from usam_ray.models.sam import load_sam


def test_tiny_sam_loads_and_encodes(zoo):
    sam = load_sam(resolve("sam:tiny", zoo))
    with torch.inference_mode():
        feats = sam.image_encoder(torch.zeros(1, 3, 256, 256))
    assert feats.shape == (1, 64, 16, 16)


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


def test_tiny_dino_gives_patch_features(zoo):
    dino = load_dino(resolve("dino:tiny", zoo))
    pixels = dino.processor(images=[np.zeros((70, 60, 3), np.uint8)], return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        hidden = dino.model(pixel_values=pixels).last_hidden_state
    side = pixels.shape[-1] // dino.patch_size
    assert hidden.shape == (1, 1 + side * side, 32)


def test_tiny_diffusion_generates_reproducibly(zoo):
    pipe = load_diffusion(resolve("diffusion:tiny", zoo))
    run = lambda: pipe(["a photo of a dog"], num_inference_steps=2, height=32, width=32,
                       generator=torch.Generator().manual_seed(3), output_type="np").images
    a, b = run(), run()
    assert a.shape == (1, 32, 32, 3)
    np.testing.assert_array_equal(a, b)


def test_hub_loader_offline_error_names_the_model(tmp_path):
    from usam_ray.models.registry import ModelNotFoundError

    with pytest.raises(ModelNotFoundError, match="clip:tiny"):
        load_clip(resolve("clip:tiny", None, explicit=tmp_path))  # an empty folder: no config.json


def _forward(spec, resolved) -> tuple:
    """Load ``resolved`` with its family's loader and run it on one blank input of the spec's size;
    returns the output's shape."""
    size = spec.input_size
    with torch.inference_mode():
        if spec.family == "sam":
            sam = load_sam(resolved)
            return tuple(sam.image_encoder(torch.zeros(1, 3, sam.image_encoder.img_size, sam.image_encoder.img_size)).shape)
        if spec.family == "clip":
            clip = load_clip(resolved)
            pixels = clip.processor(images=[np.zeros((size, size, 3), np.uint8)], return_tensors="pt")["pixel_values"]
            from usam_ray.models.clip import projected

            return tuple(projected(clip.model.get_image_features(pixel_values=pixels)).shape)
        if spec.family == "dino":
            dino = load_dino(resolved)
            pixels = dino.processor(images=[np.zeros((size, size, 3), np.uint8)], return_tensors="pt")["pixel_values"]
            return tuple(dino.model(pixel_values=pixels).last_hidden_state.shape)
        pipe = load_diffusion(resolved)
        return tuple(pipe(["x"], num_inference_steps=1, height=size, width=size, output_type="np").images.shape)


@pytest.mark.parametrize("name", [s.name for s in list_specs()])
def test_every_registered_model_loads_and_runs_or_says_where_to_get_it(name, zoo):
    """Tiny and toy models load through the real loaders and run; official and hub models, whose
    weights this machine cannot fetch, fail with an error naming the model and where to get it."""
    from usam_ray.models.registry import ModelNotFoundError, get_spec

    spec = get_spec(name)
    try:
        resolved = resolve(name, zoo)
        shape = _forward(spec, resolved)
    except ModelNotFoundError as exc:
        assert name in str(exc) or spec.source in str(exc), str(exc)
        assert spec.name.split(":")[0] in ("sam", "clip", "dino", "diffusion") and spec.source, spec
        return
    assert len(shape) >= 2 and shape[0] == 1
