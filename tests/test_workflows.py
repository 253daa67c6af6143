"""U-SAM end to end on the toy world: `usam-ray demo` run as the README says (a subprocess with
its own private Ray instance), its terminal output counted, its outputs checked, its table equal
to the README's."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from usam_ray.config import DemoConfig
from usam_ray.data.groundtruth import read_label_png
from usam_ray.data.shards import list_shards
from usam_ray.methods.usam import semantic_map
from usam_ray.workflows import run_demo
from usam_ray.types import MaskSet

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[1]
MIOU_FLOOR = 0.30
MAP50_FLOOR = 0.18
#: the demo prints one progress display per stage: ~60 lines with FMbSeg (2,141 before, 1,876 of them Ray's)
MAX_LINES = 75
#: figures across torch/numpy versions and CPUs may move a little; on one machine they repeat exactly
README_TOLERANCE = 1.0  # percentage points
#: rows labelled by a trained U-SAM head: another CPU's float rounding in the SAM embeddings (~1e-5) moves
#: the heads' training; annealed (the demo's cosine schedule) it moved these rows by up to 1.2 points
#: between this machine and CI's (4.7 at the constant rate), 1.5 in bench/usam_float_noise.py
USAM_ROWS_TOLERANCE = 2.5
RAY_NOISE = re.compile(r"core_worker\.cc|PlacementGroupCleaner|\(pid=|Dataset .* execution finished|"
                       r"RayDeprecationWarning|Loading weights|Checkpoint successfully|Traceback")


def parse_table(text: str) -> dict[str, list[float]]:
    """The comparison table printed by the demo → {method: [mIoU, mIoU-bg, mAP50]}."""
    rows = {}
    for line in text.splitlines():
        m = re.match(r"^(\S.*?)\s{2,}([\d.]+)\s+([\d.]+)\s+([\d.]+|—)\s*$", line)
        if m and not line.startswith(("mIoU", "mAP")):
            rows[m.group(1)] = [float(v) if v != "—" else float("nan") for v in m.groups()[1:]]
    return rows


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "runs" / "demo"
    exe = shutil.which("usam-ray") or str(Path(sys.executable).parent / "usam-ray")
    done = subprocess.run([exe, "demo", "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done.stdout, done.stderr


def test_terminal_shows_progress_and_results_not_rays_logs(demo):
    _out, stdout, stderr = demo
    lines = (stdout + stderr).splitlines()
    assert len(lines) <= MAX_LINES, "\n".join(lines)
    assert not [line for line in lines if RAY_NOISE.search(line)]
    for stage in ("synth", "embed", "train teacher", "train student", "label", "eval", "pseudo", "train align",
                  "refine"):
        assert any(line.startswith(f"{stage}: ") for line in lines), stage
    assert any(re.match(r"train teacher: 25/25 epochs in .*loss", line) for line in lines)


def test_usam_beats_floors_and_baselines(demo):
    out, stdout, _ = demo
    rows = json.loads((out / "eval" / "comparison.json").read_text())
    # stable method ids, in the comparison's order, each with its display name and report
    assert list(rows) == ["usam", "usam_mil", "sam_clip", "fmbseg_stage1_1", "fmbseg_stage1", "fmbseg",
                          "fmbseg_refined", "usam_uosam_lro", "usam_uosam", "fmbseg_uosam_lro", "fmbseg_uosam",
                          "coarse", "coarse_uosam_lro", "coarse_uosam", "background"]
    assert all(Path(r["report"]).is_file() for r in rows.values())
    usam, sam_clip, background = rows["usam"], rows["sam_clip"], rows["background"]
    assert usam["miou"] > MIOU_FLOOR and usam["map50"] > MAP50_FLOOR
    assert usam["miou"] > sam_clip["miou"] and usam["map50"] > sam_clip["map50"]
    assert usam["miou"] > background["miou"] and background["map50"] == 0.0
    # FMbSeg's Stage 1 pseudo labels score above SAM + CLIP (measured 30.25 vs 24.00) and 1.2's share adds
    # to 1.1 (26.95); Stage 2 (the block, balanced TSupCon) labels the same scenes better than its own
    # pseudo labels (39.62) and refining adds to it (42.13)
    assert rows["fmbseg_stage1"]["miou"] > sam_clip["miou"] + 0.03 and rows["fmbseg_stage1"]["map50"] > 0
    assert rows["fmbseg_stage1"]["miou"] > rows["fmbseg_stage1_1"]["miou"] + 0.01
    assert rows["fmbseg"]["miou"] > rows["fmbseg_stage1"]["miou"] + 0.06
    assert rows["fmbseg_refined"]["miou"] > rows["fmbseg"]["miou"] + 0.01
    # UO-SAM raises coarsened ground truth (+5.0 LRO, +8.0 with GRO in the README's run); the U-SAM and FMbSeg
    # labels are above what its prompted toy-SAM masks reach, and it lowers them (the README's table)
    assert rows["coarse_uosam_lro"]["miou"] > rows["coarse"]["miou"] + 0.02
    assert rows["coarse_uosam"]["miou"] > rows["coarse_uosam_lro"]["miou"]
    assert len({r["report"] for r in rows.values()}) == len(rows)  # each row scored into its own report
    printed = parse_table(stdout)
    assert set(printed) == {r["method"] for r in rows.values()}
    for r in rows.values():
        assert printed[r["method"]][0] == pytest.approx(100 * r["miou"], abs=0.006)


def test_the_readme_shows_what_the_demo_prints(demo):
    """The seeded demo is reproducible: the README's table is what it prints (exactly on one machine;
    within stated tolerances for other library versions and CPUs, wider for the rows a trained U-SAM
    head labels)."""
    _out, stdout, _ = demo
    readme = (ROOT / "README.md").read_text().split("<!-- demo-table -->", 1)[1].split("```", 2)[1]
    expected, printed = parse_table(readme), parse_table(stdout)
    assert expected and set(expected) == set(printed)
    for name in expected:
        tolerance = USAM_ROWS_TOLERANCE if name.startswith("U-SAM") else README_TOLERANCE
        np.testing.assert_allclose(printed[name], expected[name], atol=tolerance, err_msg=name)


def test_outputs_are_consistent(demo):
    out, _stdout, _ = demo
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    labels = out / "labels"
    dataset = COCO(str(labels / "coco_dataset.json"))
    dets = dataset.loadRes(str(labels / "coco_results.json"))  # same integer ids: loads as is
    assert len(dets.getAnnIds()) == len(dataset.getAnnIds()) > 0
    # against the toy ground truth, through file names
    gt = COCO(str(out / "toy-scenes" / "instances.json"))
    by_file = {img["file_name"]: img["id"] for img in gt.dataset["images"]}
    ours = {img["id"]: by_file[Path(img["file_name"]).name] for img in dataset.dataset["images"]}
    ev = COCOeval(gt, gt.loadRes([{**r, "image_id": ours[r["image_id"]]} for r in dets.dataset["annotations"]]),
                  "segm")
    ev.evaluate(), ev.accumulate(), ev.summarize()
    report = json.loads((out / "eval" / "report.json").read_text())
    assert ev.stats[1] == pytest.approx(report["instances"]["map50"], abs=1e-6)
    # every semantic PNG equals the map painted from that image's instances (higher score on top)
    rows = [r for s in list_shards(labels / "instances") for r in pq.read_table(s).to_pylist()]
    by_image: dict[str, list[dict]] = {}
    for r in rows:
        by_image.setdefault(r["image_id"], []).append(r)
    keys = sorted(Path(f).stem for f in by_file)
    for key in keys[:20]:
        inst = by_image.get(key, [])
        ms = MaskSet([{"size": [r["height"], r["width"]], "counts": r["counts"]} for r in inst],
                     np.array([r["box"] for r in inst], np.float32).reshape(-1, 4), [r["score"] for r in inst],
                     [r["class_id"] - 1 for r in inst])
        np.testing.assert_array_equal(read_label_png(labels / "semantic" / f"{key}.png"), semantic_map(ms, 128, 128))
    md = (out / "eval" / "report.md").read_text()
    assert "Methods compared on the same images" in md and "SAM + CLIP" in md
    assert (out / "eval" / "contact_sheet.png").is_file() and (labels / "overlays" / "index.html").is_file()
    from PIL import Image

    overlays = sorted((labels / "overlays").glob("*.png"))
    assert len(overlays) == len(keys) and min(Image.open(overlays[0]).size) >= 512


def test_rerun_skips_every_stage(demo, ray_session):
    out, stdout, _ = demo
    lines = []
    again = run_demo(DemoConfig(out=out), log=lines.append)
    assert any("up to date" in line for line in lines)
    assert again["labels"]["images"] == 0  # nothing relabelled
    first = json.loads((out / "eval" / "comparison.json").read_text())
    assert again["comparison"] == first
