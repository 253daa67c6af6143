import numpy as np
import pytest
import torch
from segment_anything import SamPredictor
from segment_anything.utils.amg import build_point_grid

from usam_ray.masks import rles_to_masks
from usam_ray.config import RuntimeConfig, SamConfig
from usam_ray.methods.sam_embed import SamMaskEmbedder, grid_points, prepare_image, resized_shape
from usam_ray.models import resolve
from usam_ray.models.sam import load_sam


@pytest.fixture(scope="module")
def sam(zoo):
    torch.manual_seed(0)
    return load_sam(resolve("sam:tiny", zoo))


def _images(seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (90, 130, 3), dtype=np.uint8)
    base[20:60, 30:80] = (250, 10, 10)  # a flat object, so masks are not all noise
    tall = rng.integers(0, 255, (150, 60, 3), dtype=np.uint8)
    return [base, tall]


@pytest.mark.parametrize("n", [1, 4, 10])
def test_grid_matches_segment_anything(n):
    np.testing.assert_allclose(grid_points(n, 70, 110), build_point_grid(n) * np.array([110, 70]))
    assert grid_points(n, 70, 110).shape == (n * n, 2)


@pytest.mark.parametrize("h, w", [(90, 130), (150, 60), (256, 256), (1, 300)])
def test_prepare_matches_predictor_resize(sam, h, w):
    img = np.random.default_rng(1).integers(0, 255, (h, w, 3), dtype=np.uint8)
    padded, (ih, iw) = prepare_image(img, 256)
    ref = SamPredictor(sam).transform.apply_image(img)
    assert (ih, iw) == ref.shape[:2] == resized_shape(h, w, 256)
    np.testing.assert_array_equal(padded[:ih, :iw], ref)
    assert padded[ih:].sum() == 0 and padded[:, iw:].sum() == 0


# Tolerances of fp32 against segment_anything's own SamPredictor. They hold on torch 2.14.1 and
# 2.15.0: the two compute the same function in a different order (SDPA attention, batched
# decoding), so logits differ by float rounding (~1e-6) and a pixel whose logit sits within that
# of the threshold may flip. Measured here: at most 1 differing pixel of 421,200.
MASK_PIXELS_DIFFERING = 1e-4  # share of mask pixels allowed to differ
IOU_ATOL = 1e-4
TOKEN_ATOL = 1e-4


def _reference(zoo):
    """A second copy of the same SAM, never touched by an embedder (SamPredictor runs it as shipped)."""
    return load_sam(resolve("sam:tiny", zoo))


def test_embedder_equals_sam_predictor(sam, zoo):
    """fp32 masks, IoU predictions and points agree with SamPredictor.predict_torch for the same points."""
    embedder = SamMaskEmbedder(sam, SamConfig(points_per_side=6, precision="fp32"))
    reference = _reference(zoo)
    images = _images()
    sets = embedder.embed(images)
    for img, ms in zip(images, sets):
        predictor = SamPredictor(reference)
        predictor.set_image(img)
        h, w = img.shape[:2]
        pts = predictor.transform.apply_coords(build_point_grid(6) * np.array([w, h]), (h, w))
        masks, iou, _ = predictor.predict_torch(
            torch.as_tensor(pts[:, None, :], dtype=torch.float), torch.ones(len(pts), 1, dtype=torch.int),
            multimask_output=True,
        )
        best = iou.argmax(dim=1)
        ref_masks = masks[torch.arange(len(best)), best].numpy()
        ref_iou = iou.max(dim=1).values.numpy()
        np.testing.assert_allclose(ms.data["iou_pred"], ref_iou, atol=IOU_ATOL)
        ours = rles_to_masks(ms.masks)
        assert ours.shape == ref_masks.shape
        assert (ours != ref_masks).mean() <= MASK_PIXELS_DIFFERING
        assert ms.data["tokens"].shape == (36, 4 * 64)
        np.testing.assert_allclose(ms.data["points"], build_point_grid(6) * np.array([w, h]), atol=1e-4)


def test_sdpa_attention_equals_segment_anything_attention(zoo):
    """The swapped encoder computes the same features as segment_anything's own (fp32)."""
    from usam_ray.models.sam_fast import SdpaAttention, use_sdpa_attention

    ours, reference = _reference(zoo), _reference(zoo)
    assert use_sdpa_attention(ours) == len(ours.image_encoder.blocks)
    assert all(isinstance(b.attn, SdpaAttention) for b in ours.image_encoder.blocks)
    assert use_sdpa_attention(ours) == 0  # idempotent
    assert ours.state_dict().keys() == reference.state_dict().keys()  # parameters shared, not copied
    x = torch.randn(2, 3, 256, 256)
    with torch.inference_mode():
        np.testing.assert_allclose(ours.image_encoder(x).numpy(), reference.image_encoder(x).numpy(), atol=1e-4)


def test_tokens_are_the_decoders_output_mask_tokens(sam):
    """Recompute the decoder transformer by hand (as MaskDecoder.predict_masks does) for one image."""
    embedder = SamMaskEmbedder(sam, SamConfig(points_per_side=3))
    img = _images()[0]
    padded, size = prepare_image(img, 256)
    ms = embedder.embed_prepared(padded[None], [size], [img.shape[:2]])[0]
    with torch.inference_mode():
        x = sam.preprocess(torch.as_tensor(padded[: size[0], : size[1]]).permute(2, 0, 1)[None].float())
        feats = sam.image_encoder(x)
        pts = torch.as_tensor(ms.data["points"] * np.array([size[1] / img.shape[1], size[0] / img.shape[0]]),
                              dtype=torch.float)[:, None]
        sparse, dense = sam.prompt_encoder(points=(pts, torch.ones(9, 1, dtype=torch.int)), boxes=None, masks=None)
        dec = sam.mask_decoder
        out_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight]).unsqueeze(0).expand(9, -1, -1)
        tokens = torch.cat([out_tokens, sparse], dim=1)
        src = feats.repeat_interleave(9, 0) + dense
        pos = sam.prompt_encoder.get_dense_pe().repeat_interleave(9, 0)
        hs, _ = dec.transformer(src, pos, tokens)
    expected = hs[:, 1:5].reshape(9, -1).numpy()
    np.testing.assert_allclose(ms.data["tokens"], expected, atol=1e-4)
    assert not np.allclose(ms.data["tokens"][0], ms.data["tokens"][4])  # differs per prompt


def test_mixed_size_batch_equals_single_images(sam):
    embedder = SamMaskEmbedder(sam, SamConfig(points_per_side=4))
    images = _images(2)
    together = embedder.embed(images)
    alone = [embedder.embed([img])[0] for img in images]
    for a, b, img in zip(together, alone, images):
        assert a.masks[0]["size"] == list(img.shape[:2])
        np.testing.assert_allclose(a.data["tokens"], b.data["tokens"], atol=1e-4)
        np.testing.assert_allclose(a.data["iou_pred"], b.data["iou_pred"], atol=1e-5)
        agree = (rles_to_masks(a.masks) == rles_to_masks(b.masks)).mean()
        assert agree > 0.999


def test_mask_chunk_does_not_change_outputs(sam):
    img = _images(3)[:1]
    a = SamMaskEmbedder(sam, SamConfig(points_per_side=4), RuntimeConfig(mask_chunk=1)).embed(img)[0]
    b = SamMaskEmbedder(sam, SamConfig(points_per_side=4), RuntimeConfig(mask_chunk=64)).embed(img)[0]
    c = SamMaskEmbedder(sam, SamConfig(points_per_side=4), RuntimeConfig(mask_pixel_budget=1)).embed(img)[0]  # one mask a chunk
    assert [r["counts"] for r in a.masks] == [r["counts"] for r in c.masks]
    assert [r["counts"] for r in a.masks] == [r["counts"] for r in b.masks]
    np.testing.assert_array_equal(a.data["stability"], b.data["stability"])
    np.testing.assert_array_equal(a.boxes, b.boxes)


def test_boxes_and_stability_are_consistent_with_masks(sam):
    from usam_ray.masks import masks_to_boxes

    ms = SamMaskEmbedder(sam, SamConfig(points_per_side=5)).embed(_images(4)[:1])[0]
    np.testing.assert_array_equal(ms.boxes, masks_to_boxes(rles_to_masks(ms.masks)))
    assert ((ms.data["stability"] >= 0) & (ms.data["stability"] <= 1)).all()


def test_rejects_wrong_input_shape(sam):
    with pytest.raises(ValueError, match="256"):
        SamMaskEmbedder(sam).embed_prepared(np.zeros((1, 100, 100, 3), np.uint8), [(100, 100)], [(100, 100)])
