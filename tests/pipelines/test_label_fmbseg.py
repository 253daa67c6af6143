"""FMbSeg end to end through Ray on the toy world with the shipped toy zoo: pseudo → train align →
label (refined, and base from the same pass) → eval, every image labelled exactly once, a bad file an error row, a
re-run labelling nothing, and Stage 1's mIoU above a floor measured on these scenes.

Stage 2 here trains with the paper's TSupCon (the default), which collapses on the toy world
(README, FMbSeg: base and refined under 2 % mIoU): its learning is tested on constructed features in
tests/heads/test_align.py and, with the balanced TSupCon, against Stage 1 in the demo
(tests/test_workflows.py); here only that its labels are well-formed."""

import json
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest

from usam_ray.config import EvalConfig, LabelConfig, PseudoConfig, TrainAlignConfig, load_config
from usam_ray.data.shards import list_shards, read_column
from usam_ray.data.toyscenes import CLASSES, write_scene_dataset
from usam_ray.eval.evaluate import run_eval
from usam_ray.heads.checkpoint import HeadMismatchError
from usam_ray.pipelines.label import run_label
from usam_ray.pipelines.label_fmbseg import run_label_fmbseg
from usam_ray.pipelines.pseudo import run_pseudo, write_stage1_labels
from usam_ray.train.align import train_align

pytestmark = pytest.mark.slow
QUIET = lambda _l: None  # noqa: E731
#: mIoU (background + 5 classes) of Stage 1 (1.1 + 75 % of 1.2) on these 24 scenes (seed 31) with
#: the shipped toy zoo, measured 0.283 on 2026-12-02 (0.264 with the CLIP before its crop-level
#: fine-tune); all-background scores ~0.14 on toy scenes.
STAGE1_FLOOR = 0.24


@pytest.fixture(scope="module")
def fmbseg_run(tmp_path_factory, ray_session):
    tmp = tmp_path_factory.mktemp("fmbseg")
    root = write_scene_dataset(tmp / "scenes", 24, seed=31)
    (root / "images" / "broken.png").write_bytes(b"\x89PNG not really")
    run = tmp / "run"
    common = ["sam.model=sam:toy", "sam.points_per_side=10", "runtime.batch_size=4", "runtime.shard_size=8",
              "runtime.progress=false"]
    pseudo = run_pseudo(load_config(PseudoConfig, None, [
        f"images={root / 'images'}", f"out={run / 'pseudo'}", f"classes={', '.join(CLASSES)}", "clip_model=clip:toy",
        "dino_model=dino:toy", "fmbseg.pred_iou_thresh=0.8", *common]), log=QUIET)
    summary = train_align(load_config(TrainAlignConfig, None, [
        f"pseudo={run / 'pseudo'}", f"out={run / 'align'}", "runtime.progress=false"]), log=QUIET)
    # refined labels and, from the same pass, the base ones (base_out)
    cfg = load_config(LabelConfig, None, [f"images={root / 'images'}", f"head={run / 'align'}", "method=fmbseg",
                                          "refined=true", f"out={run / 'refined'}", f"base_out={run / 'base'}", *common])
    return root, run, pseudo, summary, (cfg, run_label_fmbseg(cfg, log=QUIET, classes=list(CLASSES)))


def _miou(labels_dir, root):
    report = run_eval(EvalConfig(labels=labels_dir, gt=f"folder:{root}", out=labels_dir.parent / f"{labels_dir.name}-eval",
                                 parallel=False), log=QUIET)
    return report["semantic"]["miou"]


def test_every_image_labelled_once_and_errors_kept(fmbseg_run):
    root, run, pseudo, summary, (_cfg, done) = fmbseg_run
    assert (pseudo.labelled, pseudo.errors) == (24, 1)
    assert [m["epoch"] for m in summary["metrics"]] == list(range(10))
    assert (done.images, done.images_total) == (24, 24)
    for name in ("base", "refined"):
        out = run / name
        assert len(list((out / "semantic").glob("*.png"))) == 24
        ids = [r for s in list_shards(out / "images") for r in pq.read_table(s).column("file_name").to_pylist()]
        assert sorted(ids) == sorted(p.name for p in (root / "images").glob("scene_*.png"))
        errors = [r for s in list_shards(out / "errors") for r in pq.read_table(s).to_pylist()]
        assert [e["image_id"] for e in errors] == ["broken.png"]
        provenance = {r for s in list_shards(out / "instances") for r in pq.read_table(s).column("provenance").to_pylist()}
        assert provenance == {"fmbseg_refined" if name == "refined" else "fmbseg"}
        coco = json.loads((out / "coco_dataset.json").read_text())
        assert len(coco["images"]) == 24 and [c["name"] for c in coco["categories"]] == list(CLASSES)


def test_rerun_labels_nothing_and_other_heads_are_refused(fmbseg_run):
    root, run, _pseudo, _summary, (both, _) = fmbseg_run
    again = run_label_fmbseg(both, log=QUIET, classes=list(CLASSES))
    assert again.images == 0 and again.shards_done_before == 25 and again.images_total == 24
    # the base labels written beside the refined ones are a base run's: a base run resumes them
    cfg = both.model_copy(update={"refined": False, "out": run / "base", "base_out": None})
    again = run_label_fmbseg(cfg, log=QUIET, classes=list(CLASSES))
    assert again.images == 0 and again.shards_done_before == 25 and again.images_total == 24
    # a lost base shard is relabelled for the base output only: the refined one keeps one row per image
    lost = list_shards(run / "base" / "instances")[0]
    lost_ids = set(read_column(run / "base" / "images", "file_name")) - {
        r for p in list_shards(run / "base" / "images") if p.name != lost.name
        for r in pq.read_table(p, columns=["file_name"]).column("file_name").to_pylist()}
    lost.unlink()
    redo = run_label_fmbseg(both, log=QUIET, classes=list(CLASSES))
    assert redo.images == len(lost_ids) > 0 and redo.images_total == 24
    for name in ("base", "refined"):
        assert sorted(Counter(read_column(run / name / "images", "file_name")).values()) == [1] * 24, name
    with pytest.raises(HeadMismatchError, match="predicts"):
        run_label_fmbseg(cfg, log=QUIET, classes=["circle"])
    usam_cfg = cfg.model_copy(update={"method": "usam", "out": run / "usam"})
    with pytest.raises(HeadMismatchError, match="--method fmbseg"):
        run_label(usam_cfg, log=QUIET)


def test_stage1_scores_above_its_floor_and_stage2_labels_are_well_formed(fmbseg_run):
    from usam_ray.data.groundtruth import read_label_png

    root, run, _pseudo, _summary, _labels = fmbseg_run
    write_stage1_labels(run / "pseudo", run / "stage1", list(CLASSES), 0.75, 0)
    scores = {name: _miou(run / name, root) for name in ("stage1", "base", "refined")}
    print("fmbseg toy mIoU", {k: round(v, 4) for k, v in scores.items()})
    assert scores["stage1"] > STAGE1_FLOOR, scores
    for name in ("base", "refined"):
        for png in sorted((run / name / "semantic").glob("*.png"))[:6]:
            sem = read_label_png(png)
            assert sem.shape == (128, 128) and sem.max() <= len(CLASSES)
    # Stage 1 as labels: the 1.1 masks are always kept, so 1.1 only never has more instances
    only11 = write_stage1_labels(run / "pseudo", run / "stage1_1", list(CLASSES), 0.0, 0)
    assert only11[0] == 24 and only11[1] <= write_stage1_labels(run / "pseudo", run / "stage1", list(CLASSES), 0.75, 0)[1]
    assert np.isfinite(list(scores.values())).all()
