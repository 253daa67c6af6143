import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from usam_ray.data.schema import embeddings_schema, embeddings_table, row_to_maskset, shard_metadata
from usam_ray.data.shards import (
    StageConflictError, check_fingerprints, list_shards, read_manifest, remove_temp_files, shard_name,
    update_manifest, write_shard,
)
from usam_ray.masks import masks_to_rles, rles_to_masks


def test_shard_name_depends_only_on_the_set_of_ids():
    assert shard_name(["b", "a"]) == shard_name(["a", "b"]) != shard_name(["a", "c"])


def test_write_shard_is_atomic_and_carries_metadata(tmp_path):
    table = pa.table({"image_id": ["x"]})
    write_shard(table, tmp_path / "part-1.parquet", shard_metadata("embeddings", "fp1", {"sam:tiny": "w"}))
    assert [p.name for p in tmp_path.iterdir()] == ["part-1.parquet"]  # no temp file left
    meta = pq.read_schema(tmp_path / "part-1.parquet").metadata
    assert meta[b"usam_ray.fingerprint"] == b"fp1"
    check_fingerprints([tmp_path], "fp1", "embed")
    with pytest.raises(StageConflictError, match="fp1.*fp2"):
        check_fingerprints([tmp_path], "fp2", "embed")


def test_remove_temp_files(tmp_path):
    (tmp_path / "errors").mkdir()
    (tmp_path / "errors" / ".tmp-abc-part-1.parquet").write_bytes(b"half")
    assert remove_temp_files(tmp_path) == 1
    assert list_shards(tmp_path) == []


def test_embeddings_table_round_trip():
    masks = np.zeros((3, 5, 6), bool)
    masks[0, 1:3, 1:4] = True
    masks[2, :, 5] = True
    rles = masks_to_rles(masks)
    batch = {
        "image_id": np.array(["im"], object), "path": np.array(["/x/im.png"], object),
        "labels": np.array(['["dog"]'], object), "height": np.array([5]), "width": np.array([6]),
        "points": np.arange(6, dtype=np.float32).reshape(1, 3, 2),
        "tokens": np.linspace(0, 1, 3 * 8, dtype=np.float32).reshape(1, 3, 8),
        "iou": np.array([[0.1, 0.2, 0.3]]), "stability": np.array([[0.5, 0.6, 0.7]]),
        "boxes": np.zeros((1, 3, 4)), "mask_counts": np.array([[r["counts"] for r in rles]], dtype=object),
    }
    batch["mask_counts"] = np.empty(1, dtype=object)
    batch["mask_counts"][0] = [r["counts"] for r in rles]
    table = embeddings_table(batch, 8)
    assert table.schema == embeddings_schema(8)
    ms = row_to_maskset(table.to_pylist()[0])
    np.testing.assert_array_equal(rles_to_masks(ms.masks), masks)
    np.testing.assert_allclose(ms.data["tokens"], batch["tokens"][0], atol=1e-3)  # float16 storage
    np.testing.assert_allclose(ms.data["points"], batch["points"][0])


def test_manifest_updates_merge(tmp_path):
    update_manifest(tmp_path, "embed", status="running", rows=1)
    update_manifest(tmp_path, "embed", rows=5)
    m = read_manifest(tmp_path)
    assert m["stages"]["embed"] == {"status": "running", "rows": 5}
