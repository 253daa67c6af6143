"""The label pipeline through Ray, with a real (random) head on the tiny SAM."""

import json

import pytest
import torch

from conftest import write_images
from usam_ray.config import LabelConfig, load_config
from usam_ray.data.shards import list_shards
from usam_ray.heads.mil import MaskClassifier
from usam_ray.models.registry import resolve
from usam_ray.heads.checkpoint import HeadMismatchError
from usam_ray.pipelines.label import run_label

pytestmark = pytest.mark.slow
CLASSES = ["circle", "star"]


def _head(path, sam_fp, classes=CLASSES, seed=0):
    torch.manual_seed(seed)
    head = MaskClassifier(256, len(classes), hidden=32, dropout=0.0)
    # bias towards confident outputs so that some masks pass the threshold
    torch.save({"args": head.args, "state_dict": head.state_dict(), "classes": classes, "phase": "student",
                "epoch": 0, "metrics": {}, "embeddings": {"fingerprint": "x", "models": {"sam:tiny": sam_fp}}}, path)


def test_from_embeddings_gives_the_same_labels_as_the_full_run(tmp_path, zoo, ray_session):
    write_images(tmp_path / "imgs", 5, bad=False)
    sam_fp = resolve("sam:tiny", zoo).fingerprint()
    (tmp_path / "head").mkdir()
    _head(tmp_path / "head" / "best.pt", sam_fp)
    common = [f"head={tmp_path / 'head'}", f"runtime.models_dir={zoo}", "sam.points_per_side=4",
              "label.score_threshold=0.3", "label.min_area=1", "runtime.progress=false"]
    full = run_label(load_config(LabelConfig, None, [f"images={tmp_path / 'imgs'}", f"out={tmp_path / 'run' / 'labels'}",
                                                     "overlays=true", *common]), log=lambda _l: None)
    again = run_label(load_config(LabelConfig, None, [f"embeddings={tmp_path / 'run' / 'embed'}",
                                                      f"out={tmp_path / 'relabel'}", *common]), log=lambda _l: None)
    assert full.images_total == again.images_total == 5
    a = sorted((tmp_path / "run" / "labels" / "semantic").rglob("*.png"))
    b = sorted((tmp_path / "relabel" / "semantic").rglob("*.png"))
    assert [p.name for p in a] == [p.name for p in b] and all(x.read_bytes() == y.read_bytes() for x, y in zip(a, b))
    ra = json.loads((tmp_path / "run" / "labels" / "coco_results.json").read_text())
    rb = json.loads((tmp_path / "relabel" / "coco_results.json").read_text())
    assert ra == rb and full.instances_total == len(ra)
    assert len(list((tmp_path / "run" / "labels" / "overlays").rglob("*.png"))) == 5
    classes = json.loads((tmp_path / "run" / "labels" / "classes.json").read_text())
    assert classes["classes"] == ["background", *CLASSES]
    # resumable: a second run labels nothing new
    third = run_label(load_config(LabelConfig, None, [f"embeddings={tmp_path / 'run' / 'embed'}",
                                                      f"out={tmp_path / 'relabel'}", *common]), log=lambda _l: None)
    assert third.images == 0 and third.shards_done_before == len(list_shards(tmp_path / "run" / "embed"))


def test_label_writes_a_coco_dataset_and_the_exports_tools_import(tmp_path, zoo, ray_session):
    from pycocotools.coco import COCO

    from usam_ray.config import ExportSection
    from usam_ray.pipelines.label_outputs import export_labels

    files = write_images(tmp_path / "imgs", 4, bad=False)
    (tmp_path / "head").mkdir()
    _head(tmp_path / "head" / "best.pt", resolve("sam:tiny", zoo).fingerprint())
    labels = tmp_path / "run" / "labels"
    summary = run_label(load_config(LabelConfig, None, [
        f"images={tmp_path / 'imgs'}", f"out={labels}", f"head={tmp_path / 'head'}", f"runtime.models_dir={zoo}",
        "sam.points_per_side=4", "label.score_threshold=0.3", "label.min_area=1", "export.formats=[coco-polygons]"]),
        log=lambda _l: None)
    assert summary.exports == ["coco_dataset_polygons.json"] and summary.instances_total > 0
    dataset = COCO(str(labels / "coco_dataset.json"))
    assert sorted(im["file_name"] for im in dataset.dataset["images"]) == sorted(files["ok"])
    assert [im["id"] for im in dataset.dataset["images"]] == [1, 2, 3, 4]
    dets = dataset.loadRes(str(labels / "coco_results.json"))
    assert len(dets.getAnnIds()) == summary.instances_total
    polygons = COCO(str(labels / "coco_dataset_polygons.json"))
    assert len(polygons.getAnnIds()) + polygons.dataset["info"]["dropped_annotations"] == summary.instances_total
    written = export_labels(labels, ExportSection(formats=["label-studio"]))
    assert [p.name for p in written] == ["label_studio_tasks.json", "label_studio_config.xml"]
    tasks = json.loads(written[0].read_text())
    assert len(tasks) == 4 and sum(len(t["predictions"][0]["result"]) for t in tasks) == summary.instances_total


def test_head_of_another_sam_is_refused_naming_both(tmp_path, zoo, ray_session):
    write_images(tmp_path / "imgs", 1, bad=False)
    (tmp_path / "head").mkdir()
    _head(tmp_path / "head" / "best.pt", "0123456789abcdef")
    cfg = load_config(LabelConfig, None, [f"images={tmp_path / 'imgs'}", f"out={tmp_path / 'run' / 'labels'}",
                                          f"head={tmp_path / 'head'}", f"runtime.models_dir={zoo}",
                                          "sam.points_per_side=2"])
    with pytest.raises(HeadMismatchError, match="0123456789abcdef.*" + resolve("sam:tiny", zoo).fingerprint()):
        run_label(cfg, log=lambda _l: None)
