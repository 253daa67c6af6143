"""Reduced precision against fp32 on the *trained* toy SAM (random weights would say little).

Floors, measured here on 6 held-out toy scenes with a 10×10 grid (torch 2.15, CPU autocast):
bf16 mean mask IoU 0.983, token cosine mean 0.99998 (min 0.9998); fp16 0.998 / 0.999999. The
floors leave room for other torch versions and for CUDA kernels, which round differently.
"""

import numpy as np
import pytest
import torch

from usam_ray.masks import rles_to_masks
from usam_ray.config import RuntimeConfig, SamConfig
from usam_ray.methods.sam_embed import SamMaskEmbedder
from usam_ray.models import resolve
from usam_ray.models.sam import load_sam
from usam_ray.models.sam_fast import precision_name, resolve_precision
from usam_ray.data.toyscenes import scene

MEAN_MASK_IOU_FLOOR = 0.95
TOKEN_COSINE_MEAN_FLOOR = 0.999
TOKEN_COSINE_MIN_FLOOR = 0.99


@pytest.fixture(scope="module")
def toy_images():
    return [scene(np.random.default_rng(100 + i)).image for i in range(6)]


@pytest.fixture(scope="module")
def fp32_sets(toy_images):
    embedder = SamMaskEmbedder(load_sam(resolve("sam:toy")), SamConfig(points_per_side=10, precision="fp32"))
    return embedder.embed(toy_images)


def _agreement(a, b):
    ious, cosines = [], []
    for x, y in zip(a, b):
        mx, my = rles_to_masks(x.masks), rles_to_masks(y.masks)
        inter, union = (mx & my).sum((1, 2)), (mx | my).sum((1, 2))
        ious.extend(np.where(union > 0, inter / np.maximum(union, 1), 1.0))
        tx, ty = x.data["tokens"], y.data["tokens"]
        cosines.extend((tx * ty).sum(1) / np.linalg.norm(tx, axis=1) / np.linalg.norm(ty, axis=1))
    return float(np.mean(ious)), float(np.mean(cosines)), float(np.min(cosines))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_agrees_with_fp32(precision, toy_images, fp32_sets):
    embedder = SamMaskEmbedder(load_sam(resolve("sam:toy")), SamConfig(points_per_side=10, precision=precision))
    assert embedder.sam.image_encoder.patch_embed.proj.weight.dtype == resolve_precision(precision, "cpu")
    sets = embedder.embed(toy_images)
    assert all(s.data["tokens"].dtype == np.float32 for s in sets)  # outputs are float32 whatever the compute
    mean_iou, cos_mean, cos_min = _agreement(fp32_sets, sets)
    assert mean_iou >= MEAN_MASK_IOU_FLOOR, mean_iou
    assert cos_mean >= TOKEN_COSINE_MEAN_FLOOR and cos_min >= TOKEN_COSINE_MIN_FLOOR, (cos_mean, cos_min)
    assert mean_iou < 1.0 or cos_min < 1.0  # the reduced precision really ran


@pytest.mark.parametrize("precision, device, expected", [
    ("auto", "cpu", torch.float32), ("auto", "cuda", torch.bfloat16), ("fp32", "cuda", torch.float32),
    ("bf16", "cpu", torch.bfloat16), ("fp16", "cuda", torch.float16),
])
def test_resolve_precision(precision, device, expected):
    assert resolve_precision(precision, device) == expected
    assert resolve_precision(precision_name(expected), device) == expected


def test_unknown_precision_is_named():
    with pytest.raises(ValueError, match="sam.precision 'fp8'"):
        resolve_precision("fp8", "cpu")


def test_compiled_encoder_agrees_and_pads_batches(zoo):
    """torch.compile of the encoder (inductor on CPU here) gives the eager outputs, and a batch
    smaller than ``batch_size`` reuses the compiled shape instead of recompiling."""
    images = [scene(np.random.default_rng(200 + i), size=96).image for i in range(3)]
    eager = SamMaskEmbedder(load_sam(resolve("sam:tiny", zoo)), SamConfig(points_per_side=3))
    compiled = SamMaskEmbedder(load_sam(resolve("sam:tiny", zoo)),
                               SamConfig(points_per_side=3, compile=True), RuntimeConfig(batch_size=2))
    compiled.warm_up(2)
    with torch._dynamo.config.patch(error_on_recompile=True):  # the batch of 1 is padded to the compiled 2
        b = compiled.embed(images[:2]) + compiled.embed(images[2:])
    a = eager.embed(images[:2]) + eager.embed(images[2:])
    for x, y in zip(a, b):
        np.testing.assert_allclose(x.data["tokens"], y.data["tokens"], atol=1e-3)
        assert (rles_to_masks(x.masks) != rles_to_masks(y.masks)).mean() <= 1e-3
