"""The toy DINOv2's distillation targets: computed once per pool, each scene's own, blind to the
images' channel order."""


import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from usam_ray.models.clip import load_clip
from usam_ray.models.registry import resolve
from usam_ray.models.sam import load_sam
from usam_ray.toyworld.common import EVAL_SEED, scene_pool
from usam_ray.toyworld.toy_dino import IDENTITY, RECOLOURINGS, _cutout_embeddings, patch_instances, recolour, teacher_targets


def test_pool_targets_are_each_scenes_own_targets():
    """Targets computed in chunks for a pool equal those of each scene alone (one channel order:
    the teachers' own outputs, SAM's as unit vectors; tolerance: float batching), one cut-out per
    instance, and every covered patch points at one of its scene's."""
    sam = load_sam(resolve("sam:toy", None)).eval()
    clip = load_clip(resolve("clip:toy", None)).model.eval()
    pool = scene_pool(7, EVAL_SEED)
    sam_features, cutouts, owners = teacher_targets(pool, sam, clip, chunk=3, recolourings=IDENTITY)
    assert sam_features.shape[:2] == (7, 256)
    for k in (0, 4, 6):  # first chunk, a middle chunk, the short last chunk
        sc = pool[k]
        with torch.no_grad():
            alone = sam.image_encoder(sam.preprocess(torch.as_tensor(sc.image[None]).permute(0, 3, 1, 2).float()))
        torch.testing.assert_close(sam_features[k], F.normalize(alone.flatten(2).transpose(1, 2)[0], dim=-1),
                                   rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(cutouts[k], _cutout_embeddings(torch, clip, [sc]), rtol=1e-4, atol=1e-4)
        assert len(cutouts[k]) == len(sc.instances)
        np.testing.assert_array_equal(owners[k], patch_instances(sc))
        assert owners[k].max() < len(sc.instances) and (owners[k] >= 0).any()


def test_targets_do_not_change_when_the_colours_are_permuted():
    """Averaged over the six channel orders (the default), a scene and its copy with the channels
    swapped get the same targets (to float tolerance), and an inverted copy under the 12
    recolourings with inversions; with the identity alone they differ (the test can fail)."""
    sam = load_sam(resolve("sam:toy", None)).eval()
    clip = load_clip(resolve("clip:toy", None)).model.eval()
    pool = scene_pool(3, EVAL_SEED)
    swapped = [dataclasses.replace(sc, image=recolour(sc.image, ((2, 0, 1), False))) for sc in pool]
    inverted = [dataclasses.replace(sc, image=recolour(sc.image, ((1, 0, 2), True))) for sc in pool]
    with_inversions = [(order, inv) for order, _ in RECOLOURINGS for inv in (False, True)]
    for (a, b) in ((teacher_targets(pool, sam, clip), teacher_targets(swapped, sam, clip)),
                   (teacher_targets(pool, sam, clip, recolourings=with_inversions),
                    teacher_targets(inverted, sam, clip, recolourings=with_inversions))):
        torch.testing.assert_close(a[0], b[0], rtol=1e-4, atol=1e-4)
        for x, y in zip(a[1], b[1]):
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-4)
    one = teacher_targets(pool, sam, clip, recolourings=IDENTITY), teacher_targets(swapped, sam, clip, recolourings=IDENTITY)
    assert (one[0][0] - one[1][0]).abs().max() > 1e-2
    assert max(float((x - y).abs().max()) for x, y in zip(one[0][1], one[1][1])) > 1e-2
