"""The toy SAM's training."""

from usam_ray.toyworld.common import scene_pool
from usam_ray.toyworld.toy_sam import train_sam


def test_training_is_seeded():
    pool = scene_pool(12, seed=5)
    _, a = train_sam(pool, steps=3, batch=2, prompts=2, lr=1e-3, seed=9, log=lambda _l: None)
    _, b = train_sam(pool, steps=3, batch=2, prompts=2, lr=1e-3, seed=9, log=lambda _l: None)
    assert a == b
