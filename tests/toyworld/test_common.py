"""Pieces the toy trainings share."""

import numpy as np

from usam_ray.toyworld.common import interior_point, scene_pool


def test_interior_point_is_inside_and_away_from_the_edge():
    m = np.zeros((20, 30), bool)
    m[5:15, 3:25] = True
    x, y = interior_point(m)
    assert m[int(y), int(x)] and 7 <= y <= 12 and 6 <= x <= 21


def test_scene_pools_are_seeded():
    a, b = scene_pool(3, seed=5), scene_pool(3, seed=5)
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a, b))
    assert not np.array_equal(a[0].image, scene_pool(1, seed=6)[0].image)
