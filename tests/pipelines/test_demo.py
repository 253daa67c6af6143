"""U-SAM end to end on the toy world through Ray: toy synth → embed → train → label → eval,
with the baselines, exactly as `usam-ray demo` runs it (the README's first command)."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from usam_ray.data.groundtruth import read_label_png
from usam_ray.data.shards import list_shards
from usam_ray.methods.usam import semantic_map
from usam_ray.pipelines.run import run_demo
from usam_ray.types import MaskSet

pytestmark = pytest.mark.slow

# Measured with the default demo (60 scenes, 80 toy images per class; README): U-SAM 38.7 mIoU,
# 27.6 mAP50; MIL only 40.4 / 23.1; SAM + CLIP 24.5 / 5.9; all background 14.1 / 0.0.
MIOU_FLOOR = 0.30
MAP50_FLOOR = 0.18


@pytest.fixture(scope="module")
def demo(tmp_path_factory, ray_session):
    out = tmp_path_factory.mktemp("demo")
    return out, run_demo(out, log=lambda _l: None)


def test_usam_beats_floors_and_baselines(demo):
    _out, result = demo
    rows = result["comparison"]
    usam = next(v for k, v in rows.items() if k.startswith("U-SAM"))
    assert usam["miou"] > MIOU_FLOOR and usam["map50"] > MAP50_FLOOR
    sam_clip = next(v for k, v in rows.items() if k.startswith("SAM + CLIP"))
    background = rows["all background"]
    assert usam["miou"] > sam_clip["miou"] and usam["map50"] > sam_clip["map50"]
    assert usam["miou"] > background["miou"] and background["map50"] == 0.0


def test_outputs_are_consistent(demo):
    out, _result = demo
    from pycocotools.coco import COCO

    gt = COCO(str(out / "toy-scenes" / "instances.json"))
    results = json.loads((out / "labels" / "coco_results.json").read_text())
    keys = {img["file_name"].rsplit(".", 1)[0]: img["id"] for img in gt.dataset["images"]}
    dets = gt.loadRes([{**r, "image_id": keys[r["image_id"]]} for r in results])  # loads in pycocotools
    assert len(dets.getAnnIds()) == len(results) > 0
    # every semantic PNG equals the map painted from that image's instances (higher score on top)
    rows = [r for s in list_shards(out / "labels" / "instances") for r in pq.read_table(s).to_pylist()]
    by_image: dict[str, list[dict]] = {}
    for r in rows:
        by_image.setdefault(r["image_id"], []).append(r)
    for key in list(keys)[:20]:
        inst = by_image.get(key, [])
        ms = MaskSet([{"size": [r["height"], r["width"]], "counts": r["counts"]} for r in inst],
                     np.array([r["box"] for r in inst], np.float32).reshape(-1, 4), [r["score"] for r in inst],
                     [r["class_id"] - 1 for r in inst])
        np.testing.assert_array_equal(read_label_png(out / "labels" / "semantic" / f"{key}.png"),
                                      semantic_map(ms, 128, 128))
    assert (out / "eval" / "report.md").is_file() and (out / "eval" / "comparison.json").is_file()
    assert len(list((out / "labels" / "overlays").glob("*.png"))) == len(keys)


def test_rerun_skips_every_stage(demo):
    out, first = demo
    lines = []
    again = run_demo(out, log=lines.append)
    assert any("up to date" in line for line in lines)
    assert again["labels"]["images"] == 0  # nothing relabelled
    assert again["eval"]["semantic"]["miou"] == first["eval"]["semantic"]["miou"]
