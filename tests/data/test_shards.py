import os
import socket

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from usam_ray.data.schema import embeddings_masksets, embeddings_schema, embeddings_table, embeddings_tokens, list_values, shard_metadata
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
        "labels": np.array([None], object), "height": np.array([5]), "width": np.array([6]),
        "points": np.arange(6, dtype=np.float32).reshape(1, 3, 2),
        "tokens": np.linspace(0, 1, 3 * 8, dtype=np.float32).reshape(1, 3, 8),
        "iou": np.array([[0.1, 0.2, 0.3]]), "stability": np.array([[0.5, 0.6, 0.7]]),
        "boxes": np.zeros((1, 3, 4)), "mask_counts": np.array([[r["counts"] for r in rles]], dtype=object),
    }
    batch["mask_counts"] = np.empty(1, dtype=object)
    batch["mask_counts"][0] = [r["counts"] for r in rles]
    batch["labels"][0] = ["dog"]
    table = embeddings_table(batch, 8)
    assert table.schema == embeddings_schema(8)
    ms = embeddings_masksets(table)[0]
    np.testing.assert_array_equal(rles_to_masks(ms.masks), masks)
    np.testing.assert_allclose(ms.data["tokens"], batch["tokens"][0], atol=1e-3)  # float16 storage
    np.testing.assert_allclose(ms.data["points"], batch["points"][0])


def test_manifest_updates_merge(tmp_path):
    update_manifest(tmp_path, "embed", status="running", rows=1)
    update_manifest(tmp_path, "embed", rows=5)
    m = read_manifest(tmp_path)
    by = m["stages"]["embed"].pop("by")  # a status change records who made it
    assert m["stages"]["embed"] == {"status": "running", "rows": 5}
    assert by["pid"] == str(os.getpid()) and by["host"] == socket.gethostname() and "job" not in by


def test_list_values_reads_through_arrow_with_slices_and_chunks():
    """Fixed-size lists come back as (items, K) arrays with offsets, also from sliced, chunked columns."""
    rows = [[[1.0, 2.0], [3.0, 4.0]], [[5.0, 6.0], [7.0, 8.0]], [[9.0, 10.0], [11.0, 12.0]]]
    typ = pa.list_(pa.list_(pa.float16(), 2))
    col = pa.chunked_array([pa.array(rows[:1], typ), pa.array(rows[1:], typ)]).slice(1, 2)
    values, offsets = list_values(col)
    assert values.dtype == np.float16 and values.shape == (4, 2)
    np.testing.assert_array_equal(values, np.asarray(rows[1:], np.float16).reshape(4, 2))
    assert offsets.tolist() == [0, 2, 4]
    flat, off = list_values(pa.array([[1.5], [], [2.5, 3.5]], pa.list_(pa.float32())))
    assert flat.tolist() == [1.5, 2.5, 3.5] and off.tolist() == [0, 1, 1, 3]


def test_tokens_read_equal_to_pylist_reading():
    rng = np.random.default_rng(0)
    tokens = rng.standard_normal((4, 5, 8)).astype(np.float16)
    table = pa.table({"tokens": pa.array(tokens.tolist(), pa.list_(pa.list_(pa.float16(), 8)))})
    np.testing.assert_array_equal(embeddings_tokens(table), tokens)
    np.testing.assert_array_equal(embeddings_tokens(table), np.asarray(table.column("tokens").to_pylist(), np.float16))


def test_labels_must_be_lists_not_strings():
    """A JSON string of labels (the old batch format) is refused instead of split into characters."""
    batch = {"image_id": np.array(["a"], object), "path": np.array(["p"], object), "labels": np.array(['["dog"]'], object),
             "height": np.array([1]), "width": np.array([1]), "points": np.zeros((1, 1, 2)), "tokens": np.zeros((1, 1, 8)),
             "iou": np.zeros((1, 1)), "stability": np.zeros((1, 1)), "boxes": np.zeros((1, 1, 4)),
             "mask_counts": np.array([None], object)}
    batch["mask_counts"][0] = [b"1"]
    with pytest.raises(TypeError, match="list of class names"):
        embeddings_table(batch, 8)
