"""Stages called directly on dict batches, without a cluster."""

import numpy as np
import pytest

from conftest import write_images
from usam_ray.config import DataConfig
from usam_ray.data.sources import list_source, parse_source
from usam_ray.data.shards import list_shards, read_column
from usam_ray.config import SamConfig
from usam_ray.models import resolve
from usam_ray.models.sam import spec_with_arch
from usam_ray.models.registry import ResolvedModel
from usam_ray.pipelines.stages import MissingColumnError, ReadDecodeStage, SamEmbedStage, ShardWriteStage


def _objects(values):
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    return arr


def _batch(units):
    return {k: np.array([u[k] for u in units], dtype=object) for k in units[0]}


@pytest.fixture(scope="module")
def sam_model(zoo):
    r = resolve("sam:tiny", zoo)
    return ResolvedModel(spec_with_arch(r), r.location, True)


def test_read_embed_write_chain(tmp_path, sam_model):
    files = write_images(tmp_path / "imgs", 4)
    listing = list_source(parse_source(str(tmp_path / "imgs")), DataConfig(), set())
    read = ReadDecodeStage(DataConfig(), long_side=256)(_batch(listing.units))
    assert read["image"].shape == (len(listing.units), 256, 256, 3)
    failed = {i for i, e in zip(read["image_id"], read["error_type"]) if e}
    assert failed == set(files["bad"])
    embedded = SamEmbedStage(sam_model, SamConfig(points_per_side=3))(read)
    assert embedded["tokens"].shape == (len(listing.units), 9, 256) and embedded["tokens"].dtype == np.float16
    assert all(len(c) == 9 for c, e in zip(embedded["mask_counts"], embedded["error_type"]) if not e)
    out = ShardWriteStage(str(tmp_path / "run" / "embed"), "fp", {"sam:tiny": "w"}, 256)(embedded)
    assert int(out["rows"][0]) == len(files["ok"]) and int(out["errors"][0]) == len(files["bad"])
    assert sorted(read_column(tmp_path / "run" / "embed", "image_id")) == sorted(files["ok"])
    errors = read_column(tmp_path / "run" / "embed" / "errors", "error_type")
    assert sorted(errors) == ["corrupt", "corrupt", "empty"]
    # the same batch again lands on the same shard names (idempotent retries)
    ShardWriteStage(str(tmp_path / "run" / "embed"), "fp", {"sam:tiny": "w"}, 256)(embedded)
    assert len(list_shards(tmp_path / "run" / "embed")) == 1


def test_missing_column_names_stage():
    with pytest.raises(MissingColumnError, match="stage read.*image_ids"):
        ReadDecodeStage(DataConfig(), 256)({"kind": np.array(["file"]), "path": np.array(["x"])})


def test_model_failure_becomes_error_rows_not_a_crash(tmp_path, sam_model):
    stage = SamEmbedStage(sam_model, SamConfig(points_per_side=2))
    batch = {
        "image_id": np.array(["a", "b"], object), "path": np.array(["/a", "/b"], object),
        "labels": _objects([[], ["dog"]]), "height": np.array([10, 10]), "width": np.array([10, 10]),
        # the second image claims a resized size bigger than the model input: SAM cannot crop it
        "input_h": np.array([256, 0]), "input_w": np.array([256, 0]),
        "image": np.zeros((2, 256, 256, 3), np.uint8), "error_type": np.array(["", ""], object),
        "error_stage": np.array(["", ""], object), "message": np.array(["", ""], object),
    }
    out = stage(batch)
    assert out["error_type"][0] == ""
    assert out["error_type"][1] != "" and out["error_stage"][1] == "embed" and "/b" in out["message"][1]


def test_read_and_write_tasks_do_not_import_torch():
    """Read and write tasks start in fresh Ray workers: importing torch there costs ~1.5 s each."""
    import subprocess
    import sys

    code = ("import sys, usam_ray.pipelines.stages, usam_ray.pipelines.embed; "
            "print(sorted(m for m in ('torch', 'segment_anything', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
