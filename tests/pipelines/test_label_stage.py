"""Label stages called directly on a dict batch, as Ray Data would call them (no cluster)."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from usam_ray.config import LabelSettings
from usam_ray.data.schema import embeddings_table, shard_metadata
from usam_ray.data.shards import list_shards, write_shard
from usam_ray.heads.checkpoint import save_head
from usam_ray.heads.mil import MaskClassifier
from usam_ray.masks import mask_to_rle
from usam_ray.pipelines.label_stage import LabelShardStage, SamClipShardStage

CLASSES = ["circle", "star"]
P, T, H, W = 4, 8, 12, 16


def _embedding_shard(path, n=3, seed=0):
    """n images of H×W with P square masks each and random tokens."""
    rng = np.random.default_rng(seed)
    masks = []
    for k in range(P):
        m = np.zeros((H, W), bool)
        m[k:k + 5, 2 * k:2 * k + 6] = True
        masks.append(mask_to_rle(m)["counts"])
    counts = np.empty(n, dtype=object)
    counts[:] = [list(masks) for _ in range(n)]
    labels = np.empty(n, dtype=object)
    labels[:] = [[] for _ in range(n)]
    batch = {"image_id": np.array([f"sub/img{i}.png" for i in range(n)], object),
             "path": np.array([str(path.parent / f"img{i}.png") for i in range(n)], object), "labels": labels,
             "height": np.full(n, H), "width": np.full(n, W), "points": np.zeros((n, P, 2)),
             "tokens": rng.normal(0, 1, (n, P, T)), "iou": np.full((n, P), 0.9), "stability": np.full((n, P), 0.9),
             "boxes": np.tile(np.array([[2 * k, k, 2 * k + 6, k + 5] for k in range(P)], np.float32), (n, 1, 1)),
             "mask_counts": counts}
    write_shard(embeddings_table(batch, T), path, shard_metadata("embeddings", "fp-e", {"sam:test": "w"}))
    return path


def test_label_stage_on_a_dict_batch_writes_every_output_of_its_shard(tmp_path):
    torch.manual_seed(0)
    head = MaskClassifier(T, len(CLASSES), hidden=16, dropout=0.0)
    save_head(tmp_path / "best.pt", head, CLASSES, "student", 0, {}, {"fingerprint": "fp-e", "models": {}})
    shard = _embedding_shard(tmp_path / "embed" / "part-a.parquet")
    labels = tmp_path / "labels"
    stage = LabelShardStage(str(tmp_path / "best.pt"), str(labels), LabelSettings(score_threshold=0.0, min_area=1),
                            "fp-l")
    out = stage({"path": np.array([str(shard)], dtype=object)})
    assert out["shard"].tolist() == ["part-a.parquet"] and out["images"].tolist() == [3]
    instances = pq.read_table(labels / "instances" / "part-a.parquet").to_pylist()
    assert len(instances) == out["instances"][0] > 0
    assert {r["class_name"] for r in instances} <= set(CLASSES) and all(r["provenance"] == "usam" for r in instances)
    images = pq.read_table(labels / "images" / "part-a.parquet").to_pylist()
    assert [r["file_name"] for r in images] == ["sub/img0.png", "sub/img1.png", "sub/img2.png"]
    assert sum(r["instances"] for r in images) == len(instances)
    assert sorted(p.name for p in (labels / "semantic" / "sub").glob("*.png")) == ["img0.png", "img1.png", "img2.png"]
    from usam_ray.pipelines.stages import MissingColumnError

    with pytest.raises(MissingColumnError, match="stage label.*path"):
        stage({"image_id": np.array(["x"], dtype=object)})


def test_sam_clip_stage_on_a_dict_batch(tmp_path, zoo):
    from PIL import Image

    from usam_ray.models import resolve

    shard = _embedding_shard(tmp_path / "embed" / "part-b.parquet", n=2)
    for i in range(2):
        Image.fromarray(np.full((H, W, 3), 40 * i, np.uint8)).save(tmp_path / "embed" / f"img{i}.png")
    stage = SamClipShardStage(resolve("clip:tiny", zoo), CLASSES, str(tmp_path / "labels"),
                              LabelSettings(score_threshold=0.0, min_area=1), "fp-c")
    out = stage({"path": np.array([str(shard)], dtype=object)})
    assert out["images"].tolist() == [2]
    rows = [r for s in list_shards(tmp_path / "labels" / "instances") for r in pq.read_table(s).to_pylist()]
    assert len(rows) == out["instances"][0] > 0 and all(r["provenance"] == "sam_clip" for r in rows)
    assert json.loads(json.dumps([r["score"] for r in rows]))  # plain floats
