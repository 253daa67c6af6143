"""`usam-ray refine` end to end through Ray: a user-style folder of coarse PNGs, then a labels
directory of ours, with the shipped toy SAM."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from usam_ray.config import RefineConfig, load_config
from usam_ray.data.coarse import CoarseLabelsError
from usam_ray.data.groundtruth import read_label_png
from usam_ray.data.shards import list_shards, read_column, read_manifest
from usam_ray.data.toyscenes import write_coarse_labels, write_scene_dataset
from usam_ray.pipelines.refine import run_refine, run_refine_many

pytestmark = pytest.mark.slow
ZOO = Path(__file__).parents[2] / "usam_ray" / "toyworld" / "zoo"


def _cfg(labels, images, out, *extra):
    return load_config(RefineConfig, None, [f"labels={labels}", f"images={images}", f"out={out}",
                                            f"runtime.models_dir={ZOO}", "runtime.progress=false",
                                            "sam.points_per_side=10", *extra])


def _miou(pred_dir: Path, gt: Path, keys: list[str]) -> float:
    conf = np.zeros((6, 6), np.int64)
    for key in keys:
        p, g = read_label_png(pred_dir / f"{key}.png"), read_label_png(gt / "masks" / f"{key}.png")
        conf += np.bincount(g.ravel().astype(int) * 6 + p.ravel(), minlength=36).reshape(6, 6)
    iou = np.diag(conf) / np.maximum(conf.sum(0) + conf.sum(1) - np.diag(conf), 1)
    return float(iou[conf.sum(1) > 0].mean())


def test_refine_a_png_folder_then_our_labels(tmp_path, ray_session):
    gt = write_scene_dataset(tmp_path / "gt", 20, seed=4242)
    coarse = write_coarse_labels(gt, tmp_path / "coarse", seed=1)
    (coarse / "scene_00019.png").unlink()  # an image without a coarse label: an error row, not a skip
    small = read_label_png(coarse / "scene_00000.png")[::2, ::2]  # a coarse map smaller than its image
    Image.fromarray(small, "L").save(coarse / "scene_00000.png")
    run = tmp_path / "run"
    lines = []
    summary = run_refine(_cfg(coarse, gt / "images", run / "refined", f"lro_out={run / 'lro'}",
                              "runtime.shard_size=4"), log=lines.append)
    assert summary.images == 19 and summary.images_total == 19
    errors = [r for s in list_shards(run / "refined" / "errors") for r in pq.read_table(s).to_pylist()]
    assert [(e["image_id"], e["error_type"]) for e in errors] == [("scene_00019.png", "coarse_label")]
    assert "no coarse label" in errors[0]["message"]
    ids = Counter(read_column(run / "refined" / "images", "file_name"))
    assert set(ids.values()) == {1} and len(ids) == 19
    assert json.loads((run / "refined" / "classes.json").read_text())["classes"][1:] == \
        (gt / "classes.txt").read_text().split()[1:]
    prov = {r for s in list_shards(run / "refined" / "instances") for r in pq.read_table(s).column("provenance").to_pylist()}
    assert prov == {"uosam"}
    assert {r for s in list_shards(run / "lro" / "instances")
            for r in pq.read_table(s).column("provenance").to_pylist()} == {"uosam_lro"}
    assert read_label_png(run / "refined" / "semantic" / "scene_00000.png").shape == (128, 128)
    keys = [f"scene_{i:05d}" for i in range(1, 19)]
    before = _miou(coarse, gt, keys)
    lro, full = _miou(run / "lro" / "semantic", gt, keys), _miou(run / "refined" / "semantic", gt, keys)
    print(f"refine on 18 toy scenes: coarse {before:.4f} LRO {lro:.4f} LRO+GRO {full:.4f}")
    assert full > before + 0.04 and lro > before + 0.02, (before, lro, full)  # measured +7.1 and +5.3
    assert read_manifest(run)["stages"]["refine"]["status"] == "complete"
    assert (run / "refined" / "coco_dataset.json").is_file()

    again = run_refine(_cfg(coarse, gt / "images", run / "refined", f"lro_out={run / 'lro'}"))
    assert again.images == 0 and again.shards_done_before == 20  # 19 refined + 1 error row

    # a labels directory of ours (semantic/ + classes.json) is a coarse input too: LRO only on it
    second = run_refine(_cfg(run / "refined", gt / "images", tmp_path / "again" / "labels", "uosam.use_global=false"))
    assert second.images == 19
    assert {r for s in list_shards(tmp_path / "again" / "labels" / "instances")
            for r in pq.read_table(s).column("provenance").to_pylist()} == {"uosam_lro"}


def test_several_label_sets_in_one_pass_each_output_complete_once(tmp_path, ray_session):
    """Two segmenters' labels of the same images refined in one SAM pass: an output that already
    holds every image is left alone, the other is refined (its missing PNG an error row of its own),
    both manifests complete; a shared setting that differs is refused."""
    gt = write_scene_dataset(tmp_path / "gt", 8, seed=77)
    a = write_coarse_labels(gt, tmp_path / "a", seed=1)
    b = write_coarse_labels(gt, tmp_path / "b", seed=2)
    (b / "scene_00007.png").unlink()
    run_refine(_cfg(a, gt / "images", tmp_path / "ra" / "labels"))
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "ra" / "labels" / "semantic").glob("*.png")}
    lines = []
    sa, sb = run_refine_many([_cfg(a, gt / "images", tmp_path / "ra" / "labels"),
                              _cfg(b, gt / "images", tmp_path / "rb" / "labels", f"lro_out={tmp_path / 'rb' / 'lro'}")],
                             log=lines.append)
    assert (sa.images, sa.shards_done_before, sb.images) == (0, 8, 7)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "ra" / "labels" / "semantic").glob("*.png")} == before
    assert sorted(Counter(read_column(tmp_path / "ra" / "labels" / "images", "file_name")).values()) == [1] * 8
    assert sorted(Counter(read_column(tmp_path / "rb" / "labels" / "images", "file_name")).values()) == [1] * 7
    assert read_column(tmp_path / "rb" / "labels" / "errors", "image_id") == ["scene_00007.png"]
    assert not list_shards(tmp_path / "ra" / "labels" / "errors")
    assert len(read_column(tmp_path / "rb" / "lro" / "images", "file_name")) == 7
    for out in ("ra", "rb"):
        assert read_manifest(tmp_path / out)["stages"]["refine"]["status"] == "complete"
    keys = [f"scene_{i:05d}" for i in range(7)]
    assert _miou(tmp_path / "rb" / "labels" / "semantic", gt, keys) > _miou(b, gt, keys)
    assert sum(line.startswith("refine: ") for line in lines) == 2  # one header, one summary
    with pytest.raises(ValueError, match="must share uosam"):
        run_refine_many([_cfg(a, gt / "images", tmp_path / "x"), _cfg(b, gt / "images", tmp_path / "y",
                                                                      "uosam.use_global=false")])


def test_bad_coarse_inputs_fail_before_ray(tmp_path):
    (tmp_path / "pngs").mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8), "L").save(tmp_path / "pngs" / "a.png")
    (tmp_path / "imgs").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "imgs" / "a.png")
    with pytest.raises(CoarseLabelsError, match="no classes.json or classes.txt"):
        run_refine(_cfg(tmp_path / "pngs", tmp_path / "imgs", tmp_path / "out"))
    with pytest.raises(CoarseLabelsError, match="is not a folder"):
        run_refine(_cfg(tmp_path / "nope", tmp_path / "imgs", tmp_path / "out"))
    (tmp_path / "pngs" / "classes.txt").write_text("background\ncat\n")
    with pytest.raises(ValueError, match="is the coarse labels folder"):
        run_refine(_cfg(tmp_path / "pngs", tmp_path / "imgs", tmp_path / "pngs"))
