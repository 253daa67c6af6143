"""Image sources on URIs: listing and reading through pyarrow filesystems (data/storage.py).

The "remote" filesystems here are local implementations: pyarrow's ``SubTreeFileSystem`` over a
temporary folder (paths like ``bucket/images/a.png``, no leading slash, as on S3) and fsspec's
in-memory filesystem (``memory://``, through ``pyarrow.fs.FSSpecHandler``).
"""

import pickle

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from conftest import png_bytes
from usam_ray.config import DataConfig, EmbedConfig, LabelConfig, load_config
from usam_ray.data.sources import SourceError, list_source, parse_source, read_unit
from usam_ray.data.storage import Location, StorageError, is_uri, resolve


def _images(n: int, seed: int = 0) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    return {f"im{i}.png": png_bytes(rng.integers(0, 255, (10 + i, 12, 3), dtype=np.uint8)) for i in range(n)}


def _bucket(tmp_path) -> Location:
    """An S3-like location: a SubTreeFileSystem rooted at tmp_path, the source at ``bucket/data``."""
    fs = pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem())
    return Location(fs, "bucket/data", "s3://bucket/data")


def test_resolve_local_paths_and_uris(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "imgs").mkdir()
    here = resolve("imgs")
    assert isinstance(here.filesystem, pafs.LocalFileSystem) and here.path == here.text == str(tmp_path / "imgs")
    via_uri = resolve(f"file://{tmp_path}/imgs?x=1")
    assert via_uri.path == str(tmp_path / "imgs") and via_uri.text == f"file://{tmp_path}/imgs"
    assert is_uri("s3://b/k") and is_uri("memory://x") and not is_uri("/data/s3:/x") and not is_uri("C:/x")
    with pytest.raises(StorageError, match="nosuch://bucket/x: cannot open"):
        resolve("nosuch://bucket/x?secret=1")


def test_folder_and_classes_sources_on_an_s3_like_filesystem(tmp_path):
    files = _images(5)
    for i, (name, blob) in enumerate(files.items()):
        target = tmp_path / "bucket" / "data" / ("dog" if i % 2 else "cat") / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(blob)
    (tmp_path / "bucket" / "data" / "notes.txt").write_text("x")
    (tmp_path / "bucket" / "data" / ".cache").mkdir()
    (tmp_path / "bucket" / "data" / ".cache" / "im9.png").write_bytes(files["im0.png"])
    source = _bucket(tmp_path)

    from usam_ray.data.sources import SourceSpec

    listing = list_source(SourceSpec("classes", source), DataConfig(), done={"cat/im0.png"})
    assert listing.total == 5 and listing.pending == 4 and listing.source is source
    assert {u["path"] for u in listing.units} == {f"bucket/data/{'dog' if i % 2 else 'cat'}/im{i}.png"
                                                  for i in range(1, 5)}
    (error,) = listing.errors  # notes.txt is outside any class folder: an error row, named by its URI
    assert error["path"] == "s3://bucket/data/notes.txt" and error["error_type"] == "no_class_folder"
    # read through the pickled location, as a Ray read task gets it
    decoded = [d for u in listing.units for d in read_unit(u, DataConfig(), pickle.loads(pickle.dumps(source)))]
    assert [d.error_type for d in decoded] == [""] * 4
    assert {d.path for d in decoded} == {f"s3://bucket/data/{u['path'].split('/', 2)[2]}" for u in listing.units}
    assert {d.image_id: d.labels for d in decoded}["dog/im1.png"] == ["dog"]
    assert {d.image_id: d.image.shape for d in decoded}["cat/im2.png"] == (12, 12, 3)


def test_memory_uri_through_fsspec(tmp_path):
    mem = fsspec.filesystem("memory")
    files = _images(3, seed=1)
    for name, blob in files.items():
        mem.pipe(f"/usam-test/imgs/{name}", blob)
    mem.pipe("/usam-test/imgs/broken.png", b"not a png")
    mem.pipe("/usam-test/table/part-0.parquet", _parquet_bytes(files))
    try:
        spec = parse_source("memory://usam-test/imgs")
        assert spec.kind == "folder" and spec.root == "memory://usam-test/imgs"
        listing = list_source(spec, DataConfig(), set())
        decoded = {d.image_id: d for u in listing.units for d in read_unit(u, DataConfig(), listing.source)}
        assert set(decoded) == {*files, "broken.png"}
        assert decoded["broken.png"].error_type == "not_an_image"
        assert "memory://usam-test/imgs/broken.png" in decoded["broken.png"].message
        assert decoded["im2.png"].image.shape == (12, 12, 3)
        # a folder holding only Parquet is a Parquet source, on URIs as on disk
        table_spec = parse_source("memory://usam-test/table")
        assert table_spec.kind == "parquet"
        rows = list_source(table_spec, DataConfig(), {"im0.png"})
        got = [d for u in rows.units for d in read_unit(u, DataConfig(), rows.source)]
        assert sorted(d.image_id for d in got) == ["im1.png", "im2.png"] and not any(d.error_type for d in got)
        assert got[0].path.startswith("memory://usam-test/table/part-0.parquet#")
        with pytest.raises(SourceError, match="memory://usam-test/nothing does not exist"):
            parse_source("memory://usam-test/nothing")
    finally:
        mem.rm("/usam-test", recursive=True)


def _parquet_bytes(files: dict[str, bytes]) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"image": list(files.values()), "image_id": list(files)}), sink)
    return sink.getvalue().to_pybytes()


def test_ray_read_tasks_open_the_source_through_its_filesystem(tmp_path, ray_session):
    """The read half of every pipeline, in Ray worker processes, on the S3-like filesystem."""
    from usam_ray.pipelines.stages import read_images
    from usam_ray.runtime import PoolPlan

    for name, blob in _images(4, seed=2).items():
        (tmp_path / "bucket" / "data").mkdir(parents=True, exist_ok=True)
        (tmp_path / "bucket" / "data" / name).write_bytes(blob)
    from usam_ray.data.sources import SourceSpec

    listing = list_source(SourceSpec("folder", _bucket(tmp_path)), DataConfig(), set())
    pool = PoolPlan(size=1, num_cpus=1, num_gpus=0, device="cpu", torch_threads=0, read_tasks=1, read_cpus=0.5)
    rows = read_images(listing, DataConfig(), 32, 2, pool).take_all()
    assert sorted(r["image_id"] for r in rows) == [f"im{i}.png" for i in range(4)]
    assert all(r["error_type"] == "" and r["path"].startswith("s3://bucket/data/im") for r in rows)
    assert sorted(int(r["height"]) for r in rows) == [10, 11, 12, 13]


def test_run_directories_refuse_uris():
    with pytest.raises(ValueError, match="s3://bucket/run is a URI; run directories"):
        load_config(EmbedConfig, None, ["images=s3://bucket/images", "out=s3://bucket/run"])
    with pytest.raises(ValueError, match="is a URI"):
        load_config(LabelConfig, None, ["head=gs://b/head", "out=/tmp/labels"])
    assert load_config(EmbedConfig, None, ["images=s3://bucket/images", "out=/shared/run"]).images == \
        "s3://bucket/images"
