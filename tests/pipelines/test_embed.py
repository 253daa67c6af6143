"""The embed pipeline end to end through a real local Ray instance (one per session)."""

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import png_bytes, write_images
from usam_ray.config import EmbedConfig, load_config
from usam_ray.data.schema import embeddings_schema, embeddings_masksets
from usam_ray.data.shards import list_shards, read_column, read_manifest
from usam_ray.masks import rles_to_masks
from usam_ray.pipelines.embed import run_embed

pytestmark = pytest.mark.slow


def _cfg(images, out, zoo, *extra):
    return load_config(EmbedConfig, None, [f"images={images}", f"out={out}", f"runtime.models_dir={zoo}",
                                           "runtime.progress=false", *extra])


def _all_ids(run: Path) -> Counter:
    return Counter(read_column(run / "embed", "image_id") + read_column(run / "embed" / "errors", "image_id"))


def test_embed_folder_with_bad_files(tmp_path, zoo, ray_session):
    files = write_images(tmp_path / "imgs", 26)
    run = tmp_path / "run"
    lines = []
    summary = run_embed(_cfg(tmp_path / "imgs", run, zoo, "runtime.shard_size=8", "sam.points_per_side=4"),
                        log=lines.append)
    assert summary.embedded == len(files["ok"]) == 29
    assert summary.errors == len(files["bad"]) + len(files["skipped"])
    shards = list_shards(run / "embed")
    assert len(shards) >= 4  # 29 images in shards of at most 8
    table = pa.concat_tables(pq.read_table(s) for s in shards)
    assert table.schema.remove_metadata() == embeddings_schema(256)
    assert sorted(table.column("image_id").to_pylist()) == sorted(files["ok"])
    for row, ms in zip(table.to_pylist()[:5], embeddings_masksets(table.slice(0, 5))):
        assert len(ms) == 16 and ms.data["tokens"].shape == (16, 256)
        assert rles_to_masks(ms.masks).shape == (16, row["height"], row["width"])
        np.testing.assert_array_equal(ms.data["tokens"], np.asarray(row["tokens"], np.float32))
    errors = pa.concat_tables(pq.read_table(s) for s in list_shards(run / "embed" / "errors")).to_pylist()
    by_id = {e["image_id"]: e for e in errors}
    assert set(by_id) == set(files["bad"]) | set(files["skipped"])
    assert by_id["zero.png"]["error_type"] == "empty" and by_id["zero.png"]["path"].endswith("zero.png")
    assert by_id["readme.txt"]["stage"] == "list"
    manifest = read_manifest(run)["stages"]["embed"]
    assert manifest["status"] == "complete" and manifest["rows"] == 29 and manifest["errors"] == 4
    assert any("32 images" in line and "32 to embed" in line for line in lines)

    again = run_embed(_cfg(tmp_path / "imgs", run, zoo, "runtime.shard_size=8", "sam.points_per_side=4"))
    assert again.embedded == 0 and again.errors == 0 and again.already_done == 32
    # new images added to the folder are picked up by the next run, old ones are not redone
    write_images(tmp_path / "imgs" / "more", 2, seed=5, bad=False)
    third = run_embed(_cfg(tmp_path / "imgs", run, zoo, "runtime.shard_size=8", "sam.points_per_side=4"))
    assert third.embedded == 2
    assert max(_all_ids(run).values()) == 1


def test_embed_parquet_source(tmp_path, zoo, ray_session):
    rng = np.random.default_rng(1)
    images = [png_bytes(rng.integers(0, 255, (20 + i, 30, 3), dtype=np.uint8)) for i in range(9)]
    images[4] = b"broken"
    pq.write_table(pa.table({"image": images, "image_id": [f"p{i}" for i in range(9)],
                             "labels": [["dog"]] * 9}), tmp_path / "src.parquet", row_group_size=4)
    run = tmp_path / "run"
    # the source as a URI: listed and read through pyarrow's filesystem (data/storage.py), in Ray's read tasks too
    uri = f"file://{tmp_path / 'src.parquet'}"
    summary = run_embed(_cfg(uri, run, zoo, "sam.points_per_side=2", "runtime.batch_size=3"))
    assert (summary.embedded, summary.errors) == (8, 1)
    rows = pa.concat_tables(pq.read_table(s) for s in list_shards(run / "embed")).to_pylist()
    assert sorted(r["image_id"] for r in rows) == [f"p{i}" for i in range(9) if i != 4]
    assert all(r["labels"] == ["dog"] and r["height"] == 20 + int(r["image_id"][1:]) for r in rows)
    assert all(r["path"].startswith(uri + "#") for r in rows)
    (error,) = pq.read_table(list_shards(run / "embed" / "errors")[0]).to_pylist()
    assert error["image_id"] == "p4" and error["path"].startswith(uri)


def test_killed_run_resumes_to_exactly_once(tmp_path, zoo, ray_session):
    """kill -9 the CLI mid-run, then re-run: every image ends up written exactly once."""
    files = write_images(tmp_path / "imgs", 60, seed=2, bad=False)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "usam_ray.cli", "embed", "--images", str(tmp_path / "imgs"), "--out", str(run),
           "--models", str(zoo), "--set", "runtime.shard_size=2", "--set", "runtime.batch_size=2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and len(list_shards(run / "embed")) < 2 and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # The command's private Ray instance shares the driver's fate; a writer task already inside its
    # (atomic) write may still finish it. Wait until the shard folder is still.
    written_before, still_since = -1, time.time()
    while time.time() - still_since < 3 and time.time() < deadline + 30:
        now = len(read_column(run / "embed", "image_id"))
        if now != written_before:
            written_before, still_since = now, time.time()
        time.sleep(0.2)
    assert 0 < written_before < 60, "the run must be killed part-way for this test to mean anything"
    assert read_manifest(run)["stages"]["embed"]["status"] == "running"  # never marked complete
    summary = run_embed(_cfg(tmp_path / "imgs", run, zoo, "runtime.shard_size=2", "runtime.batch_size=2"))
    assert summary.already_done == written_before
    assert summary.embedded == 60 - written_before
    counts = _all_ids(run)
    assert sorted(counts) == sorted(files["ok"]) and set(counts.values()) == {1}
    assert read_manifest(run)["stages"]["embed"]["status"] == "complete"


def test_other_configuration_in_same_run_dir_is_refused(tmp_path, zoo, ray_session):
    write_images(tmp_path / "imgs", 2, bad=False)
    run = tmp_path / "run"
    run_embed(_cfg(tmp_path / "imgs", run, zoo, "sam.points_per_side=2"))
    from usam_ray.data.shards import StageConflictError

    with pytest.raises(StageConflictError, match="fingerprint"):
        run_embed(_cfg(tmp_path / "imgs", run, zoo, "sam.points_per_side=3"))


def test_missing_checkpoint_fails_before_ray_work(tmp_path):
    from usam_ray.models.registry import ModelNotFoundError

    write_images(tmp_path / "imgs", 1, bad=False)
    with pytest.raises(ModelNotFoundError, match="sam_vit_h_4b8939.pth"):
        run_embed(_cfg(tmp_path / "imgs", tmp_path / "run", tmp_path / "imgs", "sam.model=sam:vit_h"))
    assert not (tmp_path / "run").exists()


def test_bf16_embed_through_ray_on_cpu(tmp_path, zoo, ray_session):
    """The GPU's default precision, run here: bf16 shards through the whole Ray graph, with the
    tokens close to an fp32 run's (same images, same SAM)."""
    write_images(tmp_path / "imgs", 5, bad=False)
    runs = {}
    for precision in ("fp32", "bf16"):
        run = tmp_path / precision
        summary = run_embed(_cfg(tmp_path / "imgs", run, zoo, "sam.points_per_side=3", f"sam.precision={precision}"))
        assert summary.embedded == 5
        runs[precision] = pa.concat_tables(pq.read_table(s) for s in list_shards(run / "embed")).sort_by("image_id")
    assert summary.fingerprint != run_embed(_cfg(tmp_path / "imgs", tmp_path / "fp32", zoo, "sam.points_per_side=3",
                                                 "sam.precision=fp32")).fingerprint
    a = np.asarray(runs["fp32"].column("tokens").to_pylist(), np.float32)
    b = np.asarray(runs["bf16"].column("tokens").to_pylist(), np.float32)
    cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    assert cos.mean() > 0.99 and not np.array_equal(a, b)
