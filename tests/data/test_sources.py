import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import png_bytes, write_images
from usam_ray.config import DataConfig
from usam_ray.data.sources import SourceError, list_source, parse_source, read_unit


def _ids(listing):
    return sorted(i for u in listing.units for i in json.loads(u["image_ids"]))


def test_folder_lists_recursively_and_reports_non_images(tmp_path):
    files = write_images(tmp_path, 7)
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "x.png").write_bytes(b"")
    listing = list_source(parse_source(str(tmp_path)), DataConfig(), set())
    assert _ids(listing) == sorted(files["ok"] + files["bad"])
    assert listing.total == listing.pending == len(files["ok"]) + len(files["bad"])
    assert [e["image_id"] for e in listing.errors] == files["skipped"]
    assert listing.errors[0]["error_type"] == "skipped_extension"


def test_done_ids_are_skipped(tmp_path):
    files = write_images(tmp_path, 5, bad=False)
    listing = list_source(parse_source(str(tmp_path)), DataConfig(), set(files["ok"][:3]))
    assert _ids(listing) == sorted(files["ok"][3:])
    assert listing.total == 5 and listing.pending == 2


def test_class_folders_give_labels(tmp_path):
    for cls in ("dog", "cat"):
        write_images(tmp_path / cls, 2, bad=False)
    (tmp_path / "stray.png").write_bytes(png_bytes(np.zeros((4, 4, 3), np.uint8)))
    listing = list_source(parse_source(f"classes:{tmp_path}"), DataConfig(), set())
    labels = {json.loads(u["image_ids"])[0]: json.loads(u["labels"])[0] for u in listing.units}
    assert labels["dog/img_001.jpg"] == ["dog"] and labels["cat/sub/img_000.png"] == ["cat"]
    assert [e["error_type"] for e in listing.errors] == ["no_class_folder"]


def _parquet(path, n, ids=True, row_group_size=3):
    rng = np.random.default_rng(0)
    images = [png_bytes(rng.integers(0, 255, (10, 12, 3), dtype=np.uint8)) for _ in range(n)]
    table = pa.table({"image": images, "labels": [["a"] if i % 2 else ["b", "c"] for i in range(n)]})
    if ids:
        table = table.append_column("image_id", pa.array([f"id{i}" for i in range(n)]))
    pq.write_table(table, path, row_group_size=row_group_size)


def test_parquet_source_ids_labels_and_reading(tmp_path):
    _parquet(tmp_path / "a.parquet", 7)
    spec = parse_source(str(tmp_path))
    assert spec.kind == "parquet"
    listing = list_source(spec, DataConfig(), {"id0"}, rows_per_unit=2)
    assert listing.total == 7 and listing.pending == 6
    assert _ids(listing) == [f"id{i}" for i in range(1, 7)]
    decoded = [d for u in listing.units for d in read_unit(u, DataConfig())]
    assert [d.image_id for d in decoded] == [f"id{i}" for i in range(1, 7)]
    assert decoded[0].labels == ["a"] and decoded[1].labels == ["b", "c"]
    assert all(d.image.shape == (10, 12, 3) and not d.error_type for d in decoded)


def test_parquet_without_ids_uses_file_and_row(tmp_path):
    _parquet(tmp_path / "b.parquet", 4, ids=False)
    listing = list_source(parse_source(str(tmp_path / "b.parquet")), DataConfig(), set())
    assert _ids(listing) == [f"b.parquet#{i}" for i in range(4)]


def test_parquet_duplicate_ids_become_errors(tmp_path):
    pq.write_table(pa.table({"image": [b"x", b"y"], "image_id": ["same", "same"]}), tmp_path / "d.parquet")
    listing = list_source(parse_source(str(tmp_path)), DataConfig(), set())
    assert listing.total == 1 and [e["error_type"] for e in listing.errors] == ["duplicate_id"]


@pytest.mark.parametrize("setup, fragment", [
    (lambda p: None, "holds no images"),
    (lambda p: (p / "notes.txt").write_text("x"), "holds no images"),
    (lambda p: pq.write_table(pa.table({"pixels": [b"x"]}), p / "x.parquet"), "no column 'image'"),
])
def test_unusable_sources_are_clear_errors(tmp_path, setup, fragment):
    setup(tmp_path)
    with pytest.raises(SourceError, match=fragment):
        list_source(parse_source(str(tmp_path)), DataConfig(), set())


def test_missing_source(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        parse_source(str(tmp_path / "nope"))


def test_unreadable_file_becomes_error(tmp_path):
    unit = {"kind": "file", "path": str(tmp_path / "gone.png"), "image_ids": '["gone.png"]', "labels": "[[]]",
            "rows": "[]", "row_group": -1}
    (item,) = list(read_unit(unit, DataConfig()))
    assert item.error_type == "unreadable" and "gone.png" in item.message
