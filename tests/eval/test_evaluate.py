"""`usam-ray eval` end to end through Ray, equal to the single-process result."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from gt_fixtures import noisy_predictions, save_label, write_coco, write_voc
from usam_ray.cli import app
from usam_ray.config import EvalConfig, load_config
from usam_ray.data.groundtruth import CocoGroundTruth, VocGroundTruth
from usam_ray.eval.evaluate import EvalError, evaluate_local, prepare, run_eval
from usam_ray.eval.labels import LabelsError
from usam_ray.masks import mask_to_rle

pytestmark = pytest.mark.slow


def _coco_with_predictions(tmp_path, n=14, drop=()):
    data = write_coco(tmp_path / "gt" / "ann.json", n=n)
    gt = CocoGroundTruth(tmp_path / "gt" / "ann.json")
    maps = {r["key"]: gt.load_semantic(r) for r in gt.records() if r["key"] not in drop}
    labels = tmp_path / "run" / "labels"
    noisy_predictions(maps, labels, len(gt.classes))
    (labels / "classes.json").write_text(json.dumps({"classes": gt.classes, "fingerprint": "abc123"}))
    # instance predictions: every GT instance (shrunk a little) plus a false positive per image
    results = []
    names = {c["id"]: c["name"] for c in data["categories"]}
    key = {i["id"]: i["file_name"].rsplit(".", 1)[0] for i in data["images"]}
    for a in data["annotations"]:
        if a["iscrowd"]:
            continue
        results.append({"image_id": key[a["image_id"]], "category_name": names[a["category_id"]], "score": 0.9,
                        "segmentation": a["segmentation"] if isinstance(a["segmentation"], dict) else
                        _poly_rle(a, data)})
    for img in data["images"]:
        m = np.zeros((img["height"], img["width"]), bool)
        m[-3:, -3:] = True
        r = mask_to_rle(m)
        results.append({"image_id": img["id"], "category_name": "dog", "score": 0.1,
                        "segmentation": {"size": r["size"], "counts": r["counts"].decode()}})
    (labels / "coco_results.json").write_text(json.dumps(results))
    return gt, labels


def _poly_rle(a, data):
    from pycocotools import mask as mask_utils

    img = next(i for i in data["images"] if i["id"] == a["image_id"])
    r = mask_utils.merge(mask_utils.frPyObjects(a["segmentation"], img["height"], img["width"]))
    return {"size": r["size"], "counts": r["counts"].decode()}


def test_parallel_equals_single_process_exactly(tmp_path, ray_session):
    gt, labels = _coco_with_predictions(tmp_path, drop=("im003",))
    spec = f"coco:{tmp_path / 'gt' / 'ann.json'}"
    cfg = load_config(EvalConfig, None, [f"labels={labels}", f"gt={spec}", "shard_size=4", "runtime.progress=false"])
    lines = []
    report = run_eval(cfg, log=lines.append)
    assert report["shards"] == 4  # 14 images in shards of 4
    local = evaluate_local(prepare(spec, labels))
    np.testing.assert_array_equal(np.array(report["semantic"]["confusion_matrix"]), local.cm)
    single = run_eval(load_config(EvalConfig, None, [f"labels={labels}", f"gt={spec}", "parallel=false",
                                                     f"out={tmp_path / 'eval1'}"]), log=lambda _l: None)
    assert single["semantic"] == report["semantic"]
    assert single["instances"]["map50"] == report["instances"]["map50"]
    assert report["missing_predictions"] == ["im003"]
    assert 0.3 < report["semantic"]["miou"] < 0.95  # noisy labels: well above chance, below perfect
    assert report["instances"]["map50"] > 0.9  # every instance found, the false positives score low
    assert report["labels_fingerprints"]["labels"] == "abc123"
    out = labels.parent / "labels-eval"  # beside the labels (no run.json here), not the parent's eval/
    assert (out / "report.json").is_file() and (out / "per_class_iou.png").is_file()
    md = (out / "report.md").read_text()
    assert "| dog |" in md and "im003" in md


def test_voc_eval_with_instances_from_segmentation_object(tmp_path, ray_session):
    names = write_voc(tmp_path / "VOC2012", n=7)
    gt = VocGroundTruth(tmp_path / "VOC2012")
    recs = gt.records()
    maps = {r["key"]: gt.load_semantic(r) for r in recs}
    labels = tmp_path / "labels"
    noisy_predictions(maps, labels, 21, flip=0.0)  # perfect semantic labels (boundaries → background)
    results = []
    for r in recs:
        for a in gt.instances_for(r):
            results.append({"image_id": r["key"], "category_name": gt.classes[a["category_id"]], "score": 1.0,
                            "segmentation": a["segmentation"]})
    (labels / "coco_results.json").write_text(json.dumps(results))
    report = run_eval(load_config(EvalConfig, None, [f"labels={labels}", f"gt=voc:{tmp_path / 'VOC2012'}",
                                                     "shard_size=2", "runtime.progress=false"]), log=lambda _l: None)
    assert report["semantic"]["miou"] == pytest.approx(1.0)
    assert report["instances"]["map50"] == pytest.approx(1.0)
    assert report["images"] == len(names)
    assert sorted(r["key"] for r in recs) == sorted(names)


def test_size_mismatch_and_unknown_class_are_named(tmp_path, ray_session):
    gt, labels = _coco_with_predictions(tmp_path, n=5)
    spec = f"coco:{tmp_path / 'gt' / 'ann.json'}"
    save_label(np.zeros((3, 3)), labels / "semantic" / "im002.png")
    with pytest.raises(EvalError, match="im002: prediction 3x3"):
        run_eval(load_config(EvalConfig, None, [f"labels={labels}", f"gt={spec}", "shard_size=2"]), log=lambda _l: None)
    (labels / "classes.json").write_text(json.dumps({"classes": ["background", "cat", "unicorn"]}))
    with pytest.raises(LabelsError, match="unicorn"):
        prepare(spec, labels)


def test_eval_cli_prints_headline(tmp_path, ray_session):
    _gt, labels = _coco_with_predictions(tmp_path, n=6)
    result = CliRunner().invoke(app, ["eval", "--labels", str(labels), "--gt", f"coco:{tmp_path / 'gt' / 'ann.json'}",
                                      "--set", "shard_size=3"])
    assert result.exit_code == 0, result.output
    assert "mIoU" in result.output and "mAP50" in result.output and "report.md" in result.output
    bad = CliRunner().invoke(app, ["eval", "--labels", str(labels), "--gt", "voc:/nonexistent"])
    assert bad.exit_code == 2 and "val.txt" in bad.output


def test_instance_shards_are_read_like_the_results_json(tmp_path, ray_session):
    import pyarrow as pa

    from usam_ray.data.schema import INSTANCES_SCHEMA, shard_metadata
    from usam_ray.data.shards import write_shard

    gt, labels = _coco_with_predictions(tmp_path, n=6)
    spec = f"coco:{tmp_path / 'gt' / 'ann.json'}"
    from_json = run_eval(load_config(EvalConfig, None, [f"labels={labels}", f"gt={spec}", "shard_size=2",
                                                        f"out={tmp_path / 'e1'}"]), log=lambda _l: None)
    results = json.loads((labels / "coco_results.json").read_text())
    keys = {r["coco_id"]: r["key"] for r in gt.records()}
    sizes = {r["key"]: (r["height"], r["width"]) for r in gt.records()}
    rows = []
    for r in results:
        key = keys[r["image_id"]] if isinstance(r["image_id"], int) else r["image_id"]
        rows.append({"image_id": key, "class_id": gt.classes.index(r["category_name"]), "class_name": r["category_name"],
                     "score": r["score"], "height": sizes[key][0], "width": sizes[key][1],
                     "counts": r["segmentation"]["counts"].encode(), "box": [0.0, 0.0, 1.0, 1.0], "provenance": "test"})
    half = len(rows) // 2
    for part in (rows[:half], rows[half:]):
        write_shard(pa.Table.from_pylist(part, schema=INSTANCES_SCHEMA),
                    labels / "instances" / f"part-{len(part)}-{part[0]['image_id']}.parquet",
                    shard_metadata("instances", "fp", {}))
    (labels / "coco_results.json").unlink()
    from_shards = run_eval(load_config(EvalConfig, None, [f"labels={labels}", f"gt={spec}", "shard_size=2",
                                                          f"out={tmp_path / 'e2'}"]), log=lambda _l: None)
    assert from_shards["instances"]["map50"] == pytest.approx(from_json["instances"]["map50"])
    assert from_shards["instances"]["predictions"] == len(rows)
    assert from_shards["instances"]["source"].endswith("instances")


def test_both_sides_of_a_mismatch_are_reported_and_the_report_goes_beside_the_labels(tmp_path, ray_session):
    """Scoring against the wrong ground truth must say so: predictions without ground truth and
    ground truth without predictions both appear in the printed table, the JSON and the markdown."""
    from usam_ray.eval.report import headline, markdown

    gt, labels = _coco_with_predictions(tmp_path, n=6, drop=("im001",))
    for extra in ("other_a", "other_b"):
        save_label(np.zeros((8, 8), np.uint8), labels / "semantic" / f"{extra}.png")
    (labels.parent / "run.json").write_text("{}")  # a run directory: the report goes to RUN/eval
    lines = []
    report = run_eval(load_config(EvalConfig, None, [f"labels={labels}", f"gt=coco:{tmp_path / 'gt' / 'ann.json'}"]),
                      log=lines.append)
    assert report["written"]["json"] == str(labels.parent / "eval" / "report.json")
    table = headline(report)
    assert "ground truth without prediction   1" in table and "predictions without ground truth  2" in table
    assert report["predictions_without_ground_truth"] == ["other_a", "other_b"]
    assert any("2 predicted images have no ground truth" in line for line in lines)
    md = markdown(report)
    assert "Predicted images without ground truth (not scored): 2" in md and "- other_b" in md
    assert "Ground-truth images without a prediction (counted as background): 1" in md
    # footnotes only for marks that a row uses
    assert ("IoU is —" in md) == any(v is None for v in report["semantic"]["per_class_iou"].values())
    assert "Methods compared" not in md
    report["comparison"] = {"usam": {"method": "U-SAM", "miou": 0.4, "miou_no_background": 0.3, "map50": 0.25},
                            "background": {"method": "all background", "miou": 0.1, "miou_no_background": 0.0,
                                           "map50": None}}
    md = markdown(report)
    assert "| U-SAM | 40.00 | 30.00 | 25.00 |" in md and "| all background | 10.00 | 0.00 | — |" in md


def test_default_report_folder_is_never_a_parents_eval(tmp_path):
    from usam_ray.eval.evaluate import default_out

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text("{}")
    assert default_out(tmp_path / "run" / "labels") == tmp_path / "run" / "eval"
    assert default_out(tmp_path / "mine") == tmp_path / "mine-eval"
    assert default_out(tmp_path / "run" / "labels-t06") == tmp_path / "run" / "labels-t06-eval"
