"""Synth stages called directly on a dict batch, as Ray Data would call them, and the synth
pipeline through Ray (toy scenes, the tiny Stable Diffusion)."""

import io

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from usam_ray.config import SynthConfig
from usam_ray.data.shards import list_shards
from usam_ray.pipelines.synth import DiffusionStage, item_seed, run_synth, toy_batch, write_image_shard


def _items(classes, n):
    rows = [(c, i) for c in classes for i in range(n)]
    return {"image_id": np.array([f"{c}/{i:05d}" for c, i in rows], object),
            "cls": np.array([c for c, _ in rows], object),
            "seed": np.array([item_seed(c, i) for c, i in rows], np.int64)}


def test_toy_batch_and_shard_writer_on_dict_batches(tmp_path):
    batch = toy_batch(_items(["circle", "ring"], 2), size=48)
    assert batch["image_id"].tolist() == ["circle/00000", "circle/00001", "ring/00000", "ring/00001"]
    assert all(Image.open(io.BytesIO(b)).size == (48, 48) for b in batch["image"])
    again = toy_batch(_items(["circle", "ring"], 2), size=48)
    assert [bytes(b) for b in batch["image"]] == [bytes(b) for b in again["image"]]  # seeded
    out = write_image_shard(batch, str(tmp_path), "fp", {"toy": "x"})
    assert out["rows"].tolist() == [4]
    rows = pq.read_table(list_shards(tmp_path)[0]).to_pylist()
    assert [r["labels"] for r in rows] == [["circle"], ["circle"], ["ring"], ["ring"]]


def test_diffusion_stage_on_a_dict_batch(zoo):
    from usam_ray.models import resolve

    stage = DiffusionStage(resolve("diffusion:tiny", zoo), "a photo of a {c}", steps=2, guidance=7.5, size=32,
                           device="cpu")
    first = stage(_items(["dog"], 2))
    again = stage(_items(["dog"], 2))
    images = [np.asarray(Image.open(io.BytesIO(b))) for b in first["image"]]
    assert [im.shape for im in images] == [(32, 32, 3)] * 2
    assert not np.array_equal(images[0], images[1])  # per-item seeds
    assert [bytes(b) for b in first["image"]] == [bytes(b) for b in again["image"]]


CLASSES = ["circle", "star"]


def _synth(classes, source, per_class, out, models=None, batch_size=2, shard_size=64, **synth):
    cfg = SynthConfig(classes=", ".join(classes), out=out,
                      synth={"source": source, "per_class": per_class, "size": 64, **synth},
                      runtime={"batch_size": batch_size, "shard_size": shard_size, "models_dir": models})
    return run_synth(cfg, log=lambda _l: None)


@pytest.mark.slow
def test_toy_synth_is_seeded_and_resumes(tmp_path, ray_session):
    out = tmp_path / "synth"
    first = _synth(CLASSES, "toy", 3, out, shard_size=4)
    assert first["generated"] == 6 and first["total"] == 6
    rows = {r["image_id"]: r for s in list_shards(out) for r in pq.read_table(s).to_pylist()}
    assert sorted(rows) == ["circle/00000", "circle/00001", "circle/00002", "star/00000", "star/00001", "star/00002"]
    assert all(r["labels"] == [r["image_id"].split("/")[0]] for r in rows.values())
    again = _synth(CLASSES, "toy", 4, out)
    assert again["generated"] == 2 and again["total"] == 8
    for s in list_shards(out):
        s.unlink()
    _synth(CLASSES, "toy", 3, out)
    regenerated = {r["image_id"]: r for s in list_shards(out) for r in pq.read_table(s).to_pylist()}
    assert all(regenerated[k]["image"] == rows[k]["image"] for k in rows)  # same seed, same bytes
    assert item_seed("circle", 1) != item_seed("circle", 2) != item_seed("star", 1)
    with pytest.raises(ValueError, match="unicorn"):
        _synth(["unicorn"], "toy", 1, tmp_path / "x")


@pytest.mark.slow
def test_diffusion_synth_with_the_tiny_stable_diffusion(tmp_path, zoo, ray_session):
    out = tmp_path / "synth"
    result = _synth(["dog", "cat"], "diffusion", 2, out, models=zoo, model="diffusion:tiny", steps=2, size=32)
    assert result["generated"] == 4 and result["total"] == 4
    rows = [r for s in list_shards(out) for r in pq.read_table(s).to_pylist()]
    assert sorted(r["image_id"] for r in rows) == ["cat/00000", "cat/00001", "dog/00000", "dog/00001"]
    assert all(Image.open(io.BytesIO(r["image"])).size == (32, 32) for r in rows)
    by_id = {r["image_id"]: r["image"] for r in rows}
    assert by_id["dog/00000"] != by_id["dog/00001"]  # per-item seeds
    from usam_ray.models.registry import ModelNotFoundError

    with pytest.raises(ModelNotFoundError, match="diffusion:nothere"):
        _synth(["dog"], "diffusion", 1, tmp_path / "y", models=zoo, model="diffusion:nothere")
