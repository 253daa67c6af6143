"""FMbSeg Stage 1 through Ray: pseudo-label and feature shards for every image exactly once,
error rows for bad files, and a re-run that computes only what is missing."""

import numpy as np
import pyarrow.parquet as pq
import pytest

from usam_ray.config import PseudoConfig, load_config
from usam_ray.data.schema import features_arrays
from usam_ray.data.shards import list_shards, read_shard_meta
from usam_ray.data.toyscenes import CLASSES, write_scene_dataset
from usam_ray.masks import rles_to_masks
from usam_ray.pipelines.pseudo import run_pseudo

pytestmark = pytest.mark.slow


def _cfg(images, out, *extra):
    return load_config(PseudoConfig, None, [
        f"images={images}", f"out={out / 'pseudo'}", f"classes={', '.join(CLASSES)}", "sam.model=sam:toy",
        "clip_model=clip:toy", "dino_model=dino:toy", "fmbseg.pred_iou_thresh=0.8", "runtime.batch_size=2",
        "runtime.shard_size=3", "runtime.progress=false", *extra])


def _rows(d):
    return [r for s in list_shards(d) for r in pq.read_table(s).to_pylist()]


def test_pseudo_writes_every_image_once_and_resumes(tmp_path, ray_session):
    root = write_scene_dataset(tmp_path / "scenes", 5, seed=11)
    images = root / "images"
    (images / "broken.png").write_bytes(b"\x89PNG not really")
    run = tmp_path / "run"
    first = run_pseudo(_cfg(images, run), log=lambda _l: None)
    assert (first.labelled, first.errors, first.rows_total, first.errors_total) == (5, 1, 5, 1)
    pseudo, feats = _rows(run / "pseudo"), _rows(run / "features")
    ids = sorted(r["image_id"] for r in pseudo)
    assert ids == sorted(r["image_id"] for r in feats) == [f"scene_{i:05d}.png" for i in range(5)]
    assert [p.name for p in list_shards(run / "pseudo")] == [p.name for p in list_shards(run / "features")]
    for r in pseudo:
        n = len(r["class_id"])
        assert len(r["stage"]) == len(r["score"]) == len(r["boxes"]) == len(r["mask_counts"]) == n
        assert set(r["stage"]) <= {"1.1", "1.2"} and all(1 <= c <= len(CLASSES) for c in r["class_id"])
        assert {CLASSES[c - 1] for c, s in zip(r["class_id"], r["stage"]) if s == "1.1"} == set(r["detected"])
        masks = rles_to_masks([{"size": [r["height"], r["width"]], "counts": c} for c in r["mask_counts"]])
        assert masks.shape == (n, 128, 128)
    assert sum(len(r["class_id"]) for r in pseudo) == first.masks > 0
    arrays = features_arrays(pq.read_table(list_shards(run / "features")[0]))
    assert arrays[0].shape == (16 * 16, 96) and np.isfinite(arrays[0]).all()
    assert read_shard_meta(list_shards(run / "pseudo")[0]).kind == "pseudo"

    again = run_pseudo(_cfg(images, run), log=lambda _l: None)
    assert again.labelled == 0 and again.already_done == 6
    # a lost features shard (the done-marker) is recomputed, and only its images
    lost = list_shards(run / "features")[0]
    lost_ids = set(pq.read_table(lost, columns=["image_id"]).column("image_id").to_pylist())
    lost.unlink()
    third = run_pseudo(_cfg(images, run), log=lambda _l: None)
    assert third.labelled == len(lost_ids) and third.rows_total == 5
    assert sorted(r["image_id"] for r in _rows(run / "pseudo")) == ids  # rewritten under the same name
