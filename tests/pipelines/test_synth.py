"""Synth stages called directly on a dict batch, as Ray Data would call them (no cluster)."""

import io

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from usam_ray.data.shards import list_shards
from usam_ray.pipelines.synth import DiffusionStage, item_seed, toy_batch, write_image_shard


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
