"""The toy DINOv2's distillation targets: computed once per pool, each scene's own."""

import numpy as np
import torch

from usam_ray.models.clip import load_clip
from usam_ray.models.registry import resolve
from usam_ray.models.sam import load_sam
from usam_ray.toyworld.common import EVAL_SEED, scene_pool
from usam_ray.toyworld.toy_dino import _cutout_embeddings, patch_instances, teacher_targets


def test_pool_targets_are_each_scenes_own_targets():
    """Targets computed in chunks for a pool equal those of each scene alone (tolerance: float
    batching), one cut-out per instance, and every covered patch points at one of its scene's."""
    sam = load_sam(resolve("sam:toy", None)).eval()
    clip = load_clip(resolve("clip:toy", None)).model.eval()
    pool = scene_pool(7, EVAL_SEED)
    sam_features, cutouts, owners = teacher_targets(pool, sam, clip, chunk=3)
    assert sam_features.shape[:2] == (7, 256)
    for k in (0, 4, 6):  # first chunk, a middle chunk, the short last chunk
        sc = pool[k]
        with torch.no_grad():
            alone = sam.image_encoder(sam.preprocess(torch.as_tensor(sc.image[None]).permute(0, 3, 1, 2).float()))
        torch.testing.assert_close(sam_features[k], alone.flatten(2).transpose(1, 2)[0], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(cutouts[k], _cutout_embeddings(torch, clip, [sc]), rtol=1e-4, atol=1e-4)
        assert len(cutouts[k]) == len(sc.instances)
        np.testing.assert_array_equal(owners[k], patch_instances(sc))
        assert owners[k].max() < len(sc.instances) and (owners[k] >= 0).any()
